// Package stockd holds the words the domain's packages share: the sentinel
// errors several of them return, the limits on a SKU, the detail id that
// names one deduction everywhere, a partition's levels and the outcome of
// a refill. It depends on the standard library only, so every package may
// import it and none has to import another worker for a word.
//
// What works on those words lives in the packages that own the work:
// shard (Redis and the Lua scripts), scheduler (selection), preallocate
// (the pool and the MySQL catalog), sync (write-back and the reservation
// ledger), audit (the conservation check), admin and daemon.
package stockd
