package stocktest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"
	"github.com/stockd/stockd/internal/redisproc"
)

// SentinelSet is a Sentinel-managed master set the test owns: a primary,
// its replicas and the sentinels that watch them, each a redis-server on a
// free port, killed when the test ends.
type SentinelSet struct {
	Name      string
	Primary   *Redis
	Replicas  []*Redis
	Sentinels []*Redis
	t         testing.TB
}

// StartSentinelSet starts a primary with n replicas (extra are more
// redis-server arguments for all of them) and k sentinels (quorum k/2+1,
// down-after 1 s), and waits until the sentinels know the replicas and each
// other, so that a failover can happen.
func StartSentinelSet(t testing.TB, name string, n, k int, extra ...string) *SentinelSet {
	t.Helper()
	s := &SentinelSet{Name: name, t: t}
	s.Primary = StartRedis(t, append([]string{"--repl-diskless-sync-delay", "0"}, extra...)...)
	for i := 0; i < n; i++ {
		s.Replicas = append(s.Replicas, StartRedis(t, append([]string{"--replicaof", "127.0.0.1", strconv.Itoa(s.Primary.Port), "--repl-diskless-sync-delay", "0"}, extra...)...))
	}
	WaitReplicas(t, s.Primary, n)
	for i := 0; i < k; i++ {
		s.Sentinels = append(s.Sentinels, s.startSentinel(k/2+1))
	}
	s.waitKnown(n, k)
	return s
}

func (s *SentinelSet) startSentinel(quorum int) *Redis {
	t := s.t
	t.Helper()
	dir := t.TempDir()
	conf := filepath.Join(dir, "sentinel.conf")
	text := fmt.Sprintf(`bind 127.0.0.1
protected-mode no
dir %s
sentinel monitor %s 127.0.0.1 %d %d
sentinel down-after-milliseconds %s 1000
sentinel failover-timeout %s 10000
sentinel parallel-syncs %s 1
`, dir, s.Name, s.Primary.Port, quorum, s.Name, s.Name, s.Name)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return startRedis(t, redisproc.Config{Dir: dir, Conf: conf, Bare: true, Args: []string{"--sentinel"}})
}

// SentinelAddrs are the sentinels' addresses.
func (s *SentinelSet) SentinelAddrs() []string {
	var out []string
	for _, r := range s.Sentinels {
		out = append(out, r.Addr)
	}
	return out
}

// Master is the master's address as the first answering sentinel says.
func (s *SentinelSet) Master() (string, error) {
	var last error
	for _, r := range s.Sentinels {
		c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{r.Addr}, DisableCache: true, ForceSingleClient: true})
		if err != nil {
			last = err
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		hp, err := c.Do(ctx, c.B().SentinelGetMasterAddrByName().Master(s.Name).Build()).AsStrSlice()
		cancel()
		c.Close()
		if err == nil && len(hp) == 2 {
			return net.JoinHostPort(hp[0], hp[1]), nil
		}
		last = err
	}
	return "", fmt.Errorf("no sentinel names the master of %s: %v", s.Name, last)
}

// Instance is the primary or replica at addr.
func (s *SentinelSet) Instance(addr string) *Redis {
	for _, r := range append([]*Redis{s.Primary}, s.Replicas...) {
		if r.Addr == addr {
			return r
		}
	}
	return nil
}

// WaitMasterReplicas waits until the master the sentinels name has n
// replicas online, asking them again on each look: on a loaded machine
// Sentinel may fail over once more while a test waits (a master read
// before that is a replica by then, and never gets its replicas).
func (s *SentinelSet) WaitMasterReplicas(t testing.TB, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last string
	for {
		if addr, err := s.Master(); err == nil {
			if r := s.Instance(addr); r != nil {
				c := r.Client()
				info, _ := c.Do(context.Background(), c.B().Info().Section("replication").Build()).ToString()
				if strings.Contains(info, "role:master\r\n") && strings.Contains(info, "connected_slaves:"+strconv.Itoa(n)+"\r\n") && strings.Count(info, "state=online") == n {
					return
				}
				last = addr + ": " + info
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sentinels' master has not %d replicas online: %s", n, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitKnown waits until every sentinel sees n replicas and k-1 other
// sentinels (they find each other through the master's hello channel).
func (s *SentinelSet) waitKnown(n, k int) {
	t := s.t
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for _, r := range s.Sentinels {
		c := r.Client()
		for {
			kv, err := c.Do(context.Background(), c.B().Arbitrary("SENTINEL", "MASTER", s.Name).Build()).AsStrMap()
			if err == nil && kv["num-slaves"] == strconv.Itoa(n) && kv["num-other-sentinels"] == strconv.Itoa(k-1) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("sentinel %s does not see %d replicas and %d other sentinels: %v %v", r.Addr, n, k-1, kv, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// WaitReplicas waits until primary has n replicas online (their first sync
// done: until then they acknowledge no WAIT).
func WaitReplicas(t testing.TB, primary *Redis, n int) {
	t.Helper()
	c := primary.Client()
	deadline := time.Now().Add(30 * time.Second)
	for {
		info, _ := c.Do(context.Background(), c.B().Info().Section("replication").Build()).ToString()
		if strings.Contains(info, "connected_slaves:"+strconv.Itoa(n)+"\r\n") && strings.Count(info, "state=online") == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("primary %s: %d replicas not online: %s", primary.Addr, n, info)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// RedisCLI runs redis-cli with args and returns its output.
func RedisCLI(args ...string) (string, error) {
	out, err := exec.Command("redis-cli", args...).CombinedOutput()
	return string(out), err
}

// RedisCluster is a Redis Cluster the test owns: masters with a replica
// each, created by redis-cli --cluster create.
type RedisCluster struct {
	Nodes []*Redis
}

// StartRedisCluster starts masters×2 cluster-enabled instances and makes
// them a cluster with one replica per master; it waits until every node
// says cluster_state:ok.
func StartRedisCluster(t testing.TB, masters int) *RedisCluster {
	t.Helper()
	c := &RedisCluster{}
	args := []string{"create"}
	for i := 0; i < masters*2; i++ {
		r := StartRedis(t, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
			"--repl-diskless-sync-delay", "0")
		c.Nodes = append(c.Nodes, r)
		args = append(args, r.Addr)
	}
	out, err := exec.Command("redis-cli", append([]string{"--cluster"}, append(args, "--cluster-replicas", "1", "--cluster-yes")...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster create: %v: %s", err, out)
	}
	c.WaitOK(t)
	return c
}

// Seeds are the nodes' addresses.
func (c *RedisCluster) Seeds() []string {
	var out []string
	for _, r := range c.Nodes {
		out = append(out, r.Addr)
	}
	return out
}

// WaitOK waits until every live node says cluster_state:ok and agrees on
// the slots (redis-cli --cluster check).
func (c *RedisCluster) WaitOK(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for _, r := range c.Nodes {
		if r.Exited() {
			continue
		}
		for {
			out, _ := RedisCLI("-p", strconv.Itoa(r.Port), "cluster", "info")
			if strings.Contains(out, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("cluster node %s: %s", r.Addr, out)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// MasterOf is the node serving key's slot now.
func (c *RedisCluster) MasterOf(t testing.TB, key string) *Redis {
	t.Helper()
	var live *Redis
	for _, r := range c.Nodes {
		if r.Ping(context.Background()) == nil {
			live = r
			break
		}
	}
	if live == nil {
		t.Fatal("no cluster node answers")
	}
	out, err := RedisCLI("-p", strconv.Itoa(live.Port), "cluster", "keyslot", key)
	if err != nil {
		t.Fatal(err)
	}
	slot, _ := strconv.Atoi(strings.TrimSpace(out))
	nodes, err := RedisCLI("-p", strconv.Itoa(live.Port), "cluster", "nodes")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(nodes, "\n") {
		f := strings.Fields(line)
		if len(f) < 9 || !strings.Contains(f[2], "master") {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		for _, rg := range f[8:] {
			lo, hi, ok := strings.Cut(rg, "-")
			if !ok {
				hi = lo
			}
			l, err1 := strconv.Atoi(lo)
			h, err2 := strconv.Atoi(hi)
			if err1 == nil && err2 == nil && slot >= l && slot <= h {
				for _, r := range c.Nodes {
					if r.Addr == addr {
						return r
					}
				}
			}
		}
	}
	t.Fatalf("no master serves slot %d of %s", slot, key)
	return nil
}

// MigrateSlot moves the slot of key from the master that serves it to
// master to, the way redis-cli --cluster reshard does it for one slot:
// IMPORTING on the target, MIGRATING on the source, MIGRATE of its keys in
// small steps (clients meanwhile get ASK and TRYAGAIN), then SETSLOT NODE
// on both. It returns the source.
func (c *RedisCluster) MigrateSlot(t testing.TB, key string, to *Redis) *Redis {
	t.Helper()
	from := c.MasterOf(t, key)
	cli := func(r *Redis, args ...string) string {
		t.Helper()
		out, err := RedisCLI(append([]string{"-p", strconv.Itoa(r.Port)}, args...)...)
		if err != nil || strings.HasPrefix(out, "ERR") {
			t.Fatalf("redis-cli -p %d %v: %v %s", r.Port, args, err, out)
		}
		return strings.TrimSpace(out)
	}
	slot := cli(to, "cluster", "keyslot", key)
	fromID, toID := cli(from, "cluster", "myid"), cli(to, "cluster", "myid")
	cli(to, "cluster", "setslot", slot, "importing", fromID)
	cli(from, "cluster", "setslot", slot, "migrating", toID)
	for {
		keys := strings.Fields(cli(from, "cluster", "getkeysinslot", slot, "2"))
		if len(keys) == 0 {
			break
		}
		cli(from, append([]string{"migrate", "127.0.0.1", strconv.Itoa(to.Port), "", "0", "5000", "keys"}, keys...)...)
		time.Sleep(20 * time.Millisecond) // buyers meet the half-moved slot
	}
	cli(to, "cluster", "setslot", slot, "node", toID)
	cli(from, "cluster", "setslot", slot, "node", toID)
	return from
}

// IsMaster tells whether r answers as a cluster master.
func (c *RedisCluster) IsMaster(t testing.TB, r *Redis) bool {
	t.Helper()
	out, err := RedisCLI("-p", strconv.Itoa(r.Port), "role")
	return err == nil && strings.HasPrefix(strings.TrimSpace(out), "master")
}
