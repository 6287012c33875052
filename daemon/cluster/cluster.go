// Package cluster is a stockd node's membership: it gossips with the other
// nodes over hashicorp/memberlist, tells which live node owns each piece of
// background work (rendezvous hashing over member names, recomputed on
// every join, leave or failure), and carries small registry notices
// between nodes (a versioned broadcast; MySQL stays the truth, and a notice
// only makes a node look there sooner).
//
// Delegate callbacks never block: messages are copied into a bounded queue
// and dropped (and counted) when it is full; a slow timer on the reader's
// side catches up on anything dropped.
package cluster

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/stockd/stockd/internal/hashx"
)

// Config is a node's membership configuration.
type Config struct {
	// Name is this node's unique, stable name.
	Name string
	// BindAddr is host:port for gossip (UDP and TCP).
	BindAddr string
	// AdvertiseAddr is host:port other nodes reach this one at; empty:
	// BindAddr (or the first private address when it binds all).
	AdvertiseAddr string
	// Join lists host:port of nodes to join; unreachable ones are retried.
	Join []string
	// Key encrypts gossip (base64 of 16, 24 or 32 bytes); nodes without
	// the same key cannot join.
	Key string
	// Meta is what this node tells the others about itself.
	Meta Meta
	// Fast shortens failure detection (loopback tests).
	Fast bool
}

// Meta is a node's advertised metadata (memberlist's 512-byte limit).
type Meta struct {
	HTTP    string `json:"http"`
	Admin   string `json:"admin"`
	Version string `json:"version"`
}

// Member is a node of the cluster as this node sees it.
type Member struct {
	Name   string `json:"name"`
	Addr   string `json:"addr"`
	State  string `json:"state"`
	Meta   Meta   `json:"meta"`
	IsSelf bool   `json:"self"`
	// Since is when this node last saw the member's state change.
	Since time.Time `json:"since"`
}

// DecodeKey checks and decodes a gossip key.
func DecodeKey(s string) ([]byte, error) {
	if s == "" {
		return nil, nil
	}
	k, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("not base64: %w", err)
	}
	if n := len(k); n != 16 && n != 24 && n != 32 {
		return nil, fmt.Errorf("%d bytes; want 16, 24 or 32 (AES-128/192/256)", n)
	}
	return k, nil
}

// Peer is this node in the cluster.
type Peer struct {
	cfg    Config
	logger *slog.Logger
	ml     *memberlist.Memberlist
	queue  *memberlist.TransmitLimitedQueue

	// alive is the sorted names of alive members (ownership input).
	alive atomic.Pointer[[]string]

	inbox   chan []byte
	dropped atomic.Int64

	mu       sync.Mutex
	members  map[string]Member // as the event callbacks reported them
	onChange []func()
	localFn  func() []byte
	mergeFn  func([]byte)
	// changed is signalled by the event callbacks (which run under
	// memberlist's lock and must not call back into it or block);
	// Run's loop tells the listeners.
	changed chan struct{}
}

// New validates cfg and binds the gossip port; it joins nobody until Run.
func New(cfg Config, logger *slog.Logger) (*Peer, error) {
	if cfg.Name == "" {
		return nil, errors.New("node_name: required")
	}
	key, err := DecodeKey(cfg.Key)
	if err != nil {
		return nil, fmt.Errorf("gossip_key: %w", err)
	}
	host, portS, err := net.SplitHostPort(cfg.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("gossip_addr %q: %w", cfg.BindAddr, err)
	}
	port, err := strconv.Atoi(portS)
	if err != nil {
		return nil, fmt.Errorf("gossip_addr %q: bad port", cfg.BindAddr)
	}
	p := &Peer{
		cfg:     cfg,
		logger:  logger.With("component", "cluster"),
		inbox:   make(chan []byte, 1024),
		members: map[string]Member{},
		changed: make(chan struct{}, 1),
	}
	empty := []string{}
	p.alive.Store(&empty)

	mc := memberlist.DefaultLANConfig()
	if cfg.Fast {
		mc = memberlist.DefaultLocalConfig()
		mc.ProbeInterval = 200 * time.Millisecond
		mc.ProbeTimeout = 100 * time.Millisecond
		mc.SuspicionMult = 2
		mc.GossipInterval = 50 * time.Millisecond
		mc.PushPullInterval = 5 * time.Second
	}
	mc.Name = cfg.Name
	if host == "" {
		host = "0.0.0.0"
	}
	mc.BindAddr, mc.BindPort = host, port
	if cfg.AdvertiseAddr != "" {
		ah, ap, err := net.SplitHostPort(cfg.AdvertiseAddr)
		if err != nil {
			return nil, fmt.Errorf("gossip_advertise_addr %q: %w", cfg.AdvertiseAddr, err)
		}
		mc.AdvertiseAddr = ah
		if mc.AdvertisePort, err = strconv.Atoi(ap); err != nil {
			return nil, fmt.Errorf("gossip_advertise_addr %q: bad port", cfg.AdvertiseAddr)
		}
	}
	mc.SecretKey = key
	mc.Delegate = (*delegate)(p)
	mc.Events = (*events)(p)
	mc.Logger = memberlistLog(p.logger)
	mc.LogOutput = nil
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("gossip: %w", err)
	}
	p.ml = ml
	p.queue = &memberlist.TransmitLimitedQueue{NumNodes: ml.NumMembers, RetransmitMult: mc.RetransmitMult}
	return p, nil
}

// Name is this node's name.
func (p *Peer) Name() string { return p.cfg.Name }

// Addr is where this node gossips.
func (p *Peer) Addr() string {
	n := p.ml.LocalNode()
	return net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
}

// Run joins the configured peers (retrying those not up yet) and stays
// until ctx ends; then it leaves the cluster (so that others move this
// node's work at once instead of waiting to detect a failure) and stops.
func (p *Peer) Run(ctx context.Context) error {
	defer p.ml.Shutdown()
	if len(p.cfg.Join) > 0 {
		go p.join(ctx)
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-p.changed:
				p.mu.Lock()
				fns := append([]func(){}, p.onChange...)
				p.mu.Unlock()
				for _, fn := range fns {
					fn()
				}
			}
		}
	}()
	<-ctx.Done()
	if err := p.ml.Leave(3 * time.Second); err != nil {
		p.logger.Warn("leave", "err", err)
	}
	return nil
}

func (p *Peer) join(ctx context.Context) {
	backoff := 200 * time.Millisecond
	for {
		n, err := p.ml.Join(p.cfg.Join)
		if n > 0 {
			p.logger.Info("joined cluster", "contacted", n, "members", p.ml.NumMembers())
			return
		}
		p.logger.Warn("joining cluster; retrying", "peers", p.cfg.Join, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// Members lists the nodes this node has seen, alive or not, sorted by
// name.
func (p *Peer) Members() []Member {
	p.mu.Lock()
	out := make([]Member, 0, len(p.members))
	for _, m := range p.members {
		out = append(out, m)
	}
	p.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Owner returns the alive member that owns key: the rendezvous-hash winner
// over alive member names. Adding a node moves only the keys it wins; a
// node that leaves or dies gives its keys to the runners-up.
func (p *Peer) Owner(key string) string {
	return Owner(*p.alive.Load(), key)
}

// Alive lists the alive members' names, sorted.
func (p *Peer) Alive() []string { return *p.alive.Load() }

// Owns tells whether this node owns key.
func (p *Peer) Owns(key string) bool { return p.Owner(key) == p.cfg.Name }

// Owner is the rendezvous-hash winner for key among names.
func Owner(names []string, key string) string {
	var best string
	var bestW uint64
	h := hashx.FNV64(key)
	for _, n := range names {
		if w := hashx.Mix64(h ^ hashx.FNV64(n)); best == "" || w > bestW {
			best, bestW = n, w
		}
	}
	return best
}

// observe records what an event callback reported and recomputes the
// alive set; listeners hear about it from Run's loop.
func (p *Peer) observe(n *memberlist.Node, state string) {
	m := Member{
		Name:   n.Name,
		Addr:   net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port))),
		State:  state,
		IsSelf: n.Name == p.cfg.Name,
		Since:  time.Now(),
	}
	json.Unmarshal(n.Meta, &m.Meta)
	p.mu.Lock()
	if prev, ok := p.members[n.Name]; ok && prev.State == state {
		m.Since = prev.Since // an update, not a change of state
	}
	p.members[n.Name] = m
	var names []string
	for name, m := range p.members {
		if m.State == "alive" {
			names = append(names, name)
		}
	}
	p.mu.Unlock()
	sort.Strings(names)
	p.alive.Store(&names)
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

// OnChange registers fn to run after every membership change.
func (p *Peer) OnChange(fn func()) {
	p.mu.Lock()
	p.onChange = append(p.onChange, fn)
	p.mu.Unlock()
}

// Broadcast gossips msg to every node (best effort; receivers treat it as
// a hint to look at MySQL). name identifies what the message is about: a
// newer message with the same name replaces an older one still queued.
func (p *Peer) Broadcast(name string, msg []byte) {
	p.queue.QueueBroadcast(&broadcast{name: name, msg: append([]byte(nil), msg...)})
}

// SendTo sends msg to one node, best effort (UDP); it arrives in that
// node's Inbox like a broadcast.
func (p *Peer) SendTo(name string, msg []byte) error {
	if name == p.cfg.Name {
		select {
		case p.inbox <- append([]byte(nil), msg...):
		default:
			p.dropped.Add(1)
		}
		return nil
	}
	// The address comes from this package's own copy of the member list:
	// memberlist's *Node values change under its lock while we read them.
	p.mu.Lock()
	m, ok := p.members[name]
	p.mu.Unlock()
	if !ok || m.State != "alive" {
		return fmt.Errorf("no alive member %s", name)
	}
	return p.ml.SendToAddress(memberlist.Address{Addr: m.Addr, Name: name}, msg)
}

// SendReliable sends msg to one node over memberlist's reliable (TCP)
// channel; it arrives in that node's Inbox like a broadcast. It waits for
// the connection and the write (not for the receiver to read it), up to
// memberlist's TCP timeout: call it off any loop that must not block.
func (p *Peer) SendReliable(name string, msg []byte) error {
	if name == p.cfg.Name {
		return p.SendTo(name, msg)
	}
	p.mu.Lock()
	m, ok := p.members[name]
	p.mu.Unlock()
	if !ok || m.State != "alive" {
		return fmt.Errorf("no alive member %s", name)
	}
	host, portS, err := net.SplitHostPort(m.Addr)
	if err != nil {
		return err
	}
	port, err := strconv.Atoi(portS)
	if err != nil {
		return fmt.Errorf("member %s address %q: bad port", name, m.Addr)
	}
	return p.ml.SendReliable(&memberlist.Node{Name: name, Addr: net.ParseIP(host), Port: uint16(port)}, msg)
}

// Inbox delivers the messages other nodes broadcast or sent.
func (p *Peer) Inbox() <-chan []byte { return p.inbox }

// Dropped counts messages dropped because the inbox was full.
func (p *Peer) Dropped() int64 { return p.dropped.Load() }

// SetState sets what this node sends in a push/pull (local) and what it
// does with the other side's (merge); both must be quick.
func (p *Peer) SetState(local func() []byte, merge func([]byte)) {
	p.mu.Lock()
	p.localFn, p.mergeFn = local, merge
	p.mu.Unlock()
}

type broadcast struct {
	name string
	msg  []byte
}

func (b *broadcast) Invalidates(o memberlist.Broadcast) bool {
	ob, ok := o.(*broadcast)
	return ok && ob.name == b.name
}
func (b *broadcast) Message() []byte { return b.msg }
func (b *broadcast) Finished()       {}
func (b *broadcast) Name() string    { return b.name }

type delegate Peer

func (d *delegate) NodeMeta(limit int) []byte {
	b, _ := json.Marshal(d.cfg.Meta)
	if len(b) > limit {
		return nil
	}
	return b
}

func (d *delegate) NotifyMsg(b []byte) {
	msg := append([]byte(nil), b...)
	select {
	case d.inbox <- msg:
	default:
		d.dropped.Add(1)
	}
}

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.queue.GetBroadcasts(overhead, limit)
}

func (d *delegate) LocalState(join bool) []byte {
	d.mu.Lock()
	fn := d.localFn
	d.mu.Unlock()
	if fn == nil {
		return nil
	}
	return fn()
}

func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	d.mu.Lock()
	fn := d.mergeFn
	d.mu.Unlock()
	if fn != nil && len(buf) > 0 {
		fn(append([]byte(nil), buf...))
	}
}

type events Peer

func (e *events) NotifyJoin(n *memberlist.Node) {
	e.logger.Info("member joined", "member", n.Name)
	(*Peer)(e).observe(n, "alive")
}

func (e *events) NotifyLeave(n *memberlist.Node) {
	// memberlist does not tell a graceful leave from a failure here (the
	// Node it passes keeps its old state).
	e.logger.Info("member left or failed", "member", n.Name)
	(*Peer)(e).observe(n, "gone")
}

func (e *events) NotifyUpdate(n *memberlist.Node) { (*Peer)(e).observe(n, "alive") }
