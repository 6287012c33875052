package client_test

import (
	"context"
	"errors"
	"log"
	"time"

	"github.com/stockd/stockd/client"
)

// A gateway deducts one unit for an order, then confirms or releases it
// after payment. The order id is the request id: a deduction retried after
// a crash of the gateway, with the same id, can never take a second unit.
func Example() {
	c, err := client.New(client.Config{
		Endpoints: []string{"stockd-1:8080", "stockd-2:8080", "stockd-3:8080"},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := c.Deduct(ctx, client.DeductRequest{SKU: "demo-1", Qty: 1, RequestID: "order-1001", UserID: "u-42"})
	switch {
	case errors.Is(err, client.ErrSoldOut):
		log.Print("sold out")
		return
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, client.ErrUnavailable):
		// Unknown outcome: deduct again later with the same request id.
		log.Printf("retry later with request id %s", client.RequestID(err))
		return
	case err != nil:
		log.Print(err) // *client.APIError: bad input, unknown SKU, ...
		return
	}

	paid := true // the payment's outcome
	if paid {
		err = c.Confirm(ctx, res.Token)
	} else {
		err = c.Release(ctx, res.Token)
	}
	if errors.Is(err, client.ErrReleased) {
		log.Print("reservation expired before payment confirmed it")
	}
}
