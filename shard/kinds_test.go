package shard

import (
	"strings"
	"testing"
)

// KeySlot agrees with Redis Cluster's CRC16 slots (values from the Redis
// Cluster specification and CLUSTER KEYSLOT), hash tags included.
func TestKeySlot(t *testing.T) {
	for _, tc := range []struct {
		key  string
		slot uint16
	}{
		{"123456789", 0x31C3}, // the spec's CRC16 check value
		{"foo", 12182},
		{"{foo}:bar", 12182},
		{"{}foo", KeySlot("{}foo")}, // an empty tag hashes the whole key
	} {
		if got := KeySlot(tc.key); got != tc.slot {
			t.Errorf("KeySlot(%q) = %d, want %d", tc.key, got, tc.slot)
		}
	}
	if KeySlot("{}foo") == KeySlot("foo") {
		t.Error("an empty hash tag must hash the whole key")
	}
}

// A shard entry is of one kind; the errors name the field.
func TestKindValidation(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{ID: "s", Addr: "127.0.0.1:1", Cluster: &ClusterConfig{Addrs: []string{"127.0.0.1:2"}}}, "addr, cluster: one kind per shard entry"},
		{Config{ID: "s"}, "addr: required (or sentinel, or cluster)"},
		{Config{ID: "s", Sentinel: &SentinelConfig{Addrs: []string{"127.0.0.1:2"}}}, `sentinel.master_set "": required`},
		{Config{ID: "s", Sentinel: &SentinelConfig{MasterSet: "m", Addrs: []string{"nope"}}}, `sentinel.addrs[0] "nope"`},
		{Config{ID: "s", Cluster: &ClusterConfig{}}, "cluster.addrs: at least one host:port"},
		{Config{ID: "s", KindName: "sentinel", Addr: "127.0.0.1:1"}, `kind "sentinel": but the entry sets addr`},
		{Config{ID: "s", Cluster: &ClusterConfig{Addrs: []string{"127.0.0.1:2"}}, Settings: Settings{Durability: DurabilityReplica, Replicas: 1}}, "durability replica: not with kind cluster"},
	} {
		err := tc.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.cfg, err, tc.want)
		}
	}
	// The location round-trips through MySQL's one string.
	for _, c := range []Config{
		{ID: "s", Addr: "127.0.0.1:1"},
		{ID: "s", Sentinel: &SentinelConfig{MasterSet: "m", Addrs: []string{"127.0.0.1:2", "127.0.0.1:3"}}},
		{ID: "s", Cluster: &ClusterConfig{Addrs: []string{"127.0.0.1:2", "127.0.0.1:3"}}},
	} {
		back := Settings{}.For("s", c.Location())
		if back.Location() != c.Location() || back.Kind() != c.Kind() || back.Validate() != nil {
			t.Errorf("%s came back as %s (%s, %v)", c.Location(), back.Location(), back.Kind(), back.Validate())
		}
	}
}
