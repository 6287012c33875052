package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
)

type move struct {
	Partition *int   `json:"partition"`
	Shard     string `json:"shard"`
}

type spec struct {
	Partitions *int     `json:"partitions"`
	Move       *move    `json:"move"`
	Pin        []string `json:"pin"`
	Note       string   `json:"note,omitempty"`
	Skip       string   `json:"-"`
}

var specKeys = KeysOf(spec{})

func TestCheck(t *testing.T) {
	cases := []struct {
		body   string
		key    string // a *KeyError naming it
		reason string
		err    error
	}{
		{`{"partitions":3}`, "", "", nil},
		{` {"move":{"partition":1,"shard":"s1"},"note":"x\"y"} `, "", "", nil},
		{`{"pin":["a","b"],"partitions":null}`, "", "", nil},
		{`{}`, "", "", nil},
		{`{"Partitions":3}`, "Partitions", Unknown, nil},
		{`{"partitions":3,"PARTITIONS":4}`, "PARTITIONS", Unknown, nil},
		{"{\"mo\u212ae\":{}}", "mo\u212ae", Unknown, nil},
		{`{"partitions":3,"partitions":4}`, "partitions", Duplicate, nil},
		{`{"move":{"shard":"a","shard":"b"}}`, "shard", Duplicate, nil},
		{`{"move":{"Shard":"a"}}`, "Shard", Unknown, nil},
		{`{"p\u0061rtitions":3}`, `p\u0061rtitions`, Escaped, nil},
		{`{"Skip":"x"}`, "Skip", Unknown, nil},
		{`{"-":"x"}`, "-", Unknown, nil},
		{`{"note":"\u00e9","pin":[{"x":1}]}`, "", "", nil}, // inside arrays: not checked
		{`[1]`, "", "", ErrNotObject},
		{`"x"`, "", "", ErrNotObject},
		{``, "", "", ErrSyntax},
		{`{`, "", "", ErrSyntax},
		{`{"partitions":3}x`, "", "", ErrSyntax},
		{`{"partitions":03}`, "", "", ErrSyntax},
		{`{"partitions":3,}`, "", "", ErrSyntax},
		{`{"note":"a` + "\x01" + `"}`, "", "", ErrSyntax},
		{`{"note":"\x"}`, "", "", ErrSyntax},
		{`{"pin":` + strings.Repeat("[", MaxDepth+1) + strings.Repeat("]", MaxDepth+1) + `}`, "", "", ErrSyntax},
	}
	for _, c := range cases {
		err := Check([]byte(c.body), specKeys)
		var ke *KeyError
		switch {
		case c.key != "":
			if !errors.As(err, &ke) || ke.Key != c.key || ke.Reason != c.reason {
				t.Errorf("%s: %v, want %s %q", c.body, err, c.reason, c.key)
			}
		case err != c.err:
			t.Errorf("%s: %v, want %v", c.body, err, c.err)
		}
	}
	if got := (&KeyError{Key: `s\u006bu`, Reason: Escaped}).Error(); got != `body: escaped key "s\\u006bu"` {
		t.Errorf("message %s", got)
	}
}

// refKeys is the reference: encoding/json's own tokens, keys compared
// exactly after decoding, duplicates counted per object. It reports
// whether every key of every object reached through objects is allowed
// and unique, and whether the body is one valid object.
func refKeys(body []byte, keys Keys) (keysOK, valid bool) {
	if !json.Valid(body) {
		return false, false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		return false, true
	}
	return refObject(dec, keys), true
}

func refObject(dec *json.Decoder, keys Keys) bool {
	seen := map[string]bool{}
	for dec.More() {
		tok, _ := dec.Token()
		k := tok.(string)
		sub, ok := keys[k]
		if !ok || seen[k] {
			return false
		}
		seen[k] = true
		if sub != nil {
			var raw json.RawMessage
			dec.Decode(&raw)
			if len(raw) > 0 && raw[0] == '{' {
				d := json.NewDecoder(bytes.NewReader(raw))
				d.Token()
				if !refObject(d, sub) {
					return false
				}
			}
			continue
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil && err != io.EOF {
			return false
		}
	}
	dec.Token()
	return true
}

// FuzzCheck holds Check to encoding/json: what Check accepts is a valid
// object whose keys encoding/json reads as exactly the allowed ones, once
// each; a valid object without escapes, within the depth limit, whose keys
// are allowed and unique is accepted; what Check calls malformed,
// encoding/json calls malformed too.
func FuzzCheck(f *testing.F) {
	f.Add(`{"partitions":3}`)
	f.Add(`{"move":{"partition":1,"shard":"s1"},"pin":["a"]}`)
	f.Add(`{"PARTITIONS":1,"partitions":2}`)
	f.Add(`{"note":"\u00e9\n","pin":[1,2.5e-3,true,null,{"a":{}}]}`)
	f.Fuzz(func(t *testing.T, body string) {
		b := []byte(body)
		err := Check(b, specKeys)
		keysOK, valid := refKeys(b, specKeys)
		shallow := strings.Count(body, "[")+strings.Count(body, "{") <= MaxDepth
		var ke *KeyError
		switch {
		case err == nil:
			if !valid || !keysOK {
				t.Fatalf("%q: accepted; encoding/json: valid %v, keys exact and unique %v", body, valid, keysOK)
			}
		case errors.As(err, &ke):
			if ke.Reason != Escaped && keysOK && valid {
				t.Fatalf("%q: %v, but encoding/json reads allowed unique keys", body, err)
			}
		case err == ErrSyntax:
			if valid && shallow {
				t.Fatalf("%q: malformed, encoding/json says valid", body)
			}
		case err == ErrNotObject:
			if !valid {
				t.Fatalf("%q: not an object, encoding/json says invalid", body)
			}
		}
		if valid && keysOK && shallow && !strings.Contains(body, `\`) && err != nil {
			t.Fatalf("%q: refused (%v), encoding/json reads allowed unique keys", body, err)
		}
	})
}
