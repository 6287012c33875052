// stockd status page. No framework, no build step: it reads the admin JSON
// routes (/admin/cluster, /admin/shards, /admin/skus, /admin/stats) once a
// second and updates the page in place (rows are keyed, and
// only what changed is touched, so nothing flickers).
//
// Credentials: a token in the URL fragment (/#token=...) is sent as
// "Authorization: Bearer <token>"; it is kept in this tab's sessionStorage
// (so a reload still works) and removed from the address bar. Without one,
// the browser's own HTTP Basic credentials for this origin are used; if it
// has none, the page goes to /login, where the browser asks for them (user
// name: anything, password: the admin or read token) and comes back.
'use strict';

(function () {
  const REFRESH_MS = 1000;
  const TIMEOUT_MS = 5000;
  const TOKEN_KEY = 'stockd.admin.token';

  const $ = (id) => document.getElementById(id);
  const nf = new Intl.NumberFormat('en-US');
  const num = (n) => (typeof n === 'number' ? nf.format(n) : '–');

  // ---- credentials -------------------------------------------------------

  let token = '';
  let signedIn = false; // back from /login: do not go there again
  (function readFragment() {
    const h = location.hash;
    if (h === '#signed-in') {
      signedIn = true;
    } else {
      const m = /(?:^#|&)token=([^&]*)/.exec(h);
      if (m) {
        try { token = decodeURIComponent(m[1]); } catch (e) { token = m[1]; }
        try { sessionStorage.setItem(TOKEN_KEY, token); } catch (e) { /* storage off */ }
      }
    }
    if (h) {
      // Strip the fragment: the token should not stay on screen, in
      // bookmarks or in screenshots.
      history.replaceState(null, '', location.pathname + location.search);
    }
    if (!token) {
      try { token = sessionStorage.getItem(TOKEN_KEY) || ''; } catch (e) { token = ''; }
    }
  })();

  class APIError extends Error {
    constructor(path, status, msg) {
      super(`GET ${path}: ${status ? status + ' ' : ''}${msg}`);
      this.path = path;
      this.status = status;
    }
  }

  async function api(path) {
    const headers = { Accept: 'application/json' };
    if (token) headers.Authorization = 'Bearer ' + token;
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
    let resp;
    try {
      // location.origin, not a relative URL: a page opened as
      // http://user:pass@host/ has credentials in its base URL, and fetch
      // refuses URLs that carry credentials.
      // With a token, no browser credentials at all ('omit'): a refused
      // token then comes back to the page as a 401 instead of a sign-in
      // prompt.
      resp = await fetch(location.origin + path, {
        headers, cache: 'no-store', credentials: token ? 'omit' : 'same-origin', signal: ctl.signal,
      });
    } catch (e) {
      throw new APIError(path, 0, e.name === 'AbortError' ? `no answer within ${TIMEOUT_MS / 1000}s` : 'node unreachable (' + e.message + ')');
    } finally {
      clearTimeout(timer);
    }
    if (!resp.ok) {
      let msg = resp.statusText;
      try { msg = (await resp.json()).error || msg; } catch (e) { /* not JSON */ }
      throw new APIError(path, resp.status, msg);
    }
    return resp.json();
  }

  // ---- DOM helpers ---------------------------------------------------------

  function el(tag, cls, text) {
    const n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text !== undefined) n.textContent = text;
    return n;
  }
  function setText(n, text) {
    text = String(text);
    if (n.textContent !== text) n.textContent = text;
  }
  function setAttr(n, name, value) {
    value = String(value);
    if (n.getAttribute(name) !== value) n.setAttribute(name, value);
  }
  function setClass(n, cls) {
    if (n.className !== cls) n.className = cls;
  }
  function setHidden(n, hidden) {
    if (n.hidden !== hidden) n.hidden = hidden;
  }

  // sync makes container's children match items, in order: a child per
  // item, keyed by keyOf(item) (kept in data-key). New items get create(),
  // every item gets update(node, item); children of items gone are removed.
  function sync(container, items, keyOf, create, update) {
    const old = new Map();
    for (const c of container.children) old.set(c.dataset.key, c);
    let prev = null;
    for (const item of items) {
      const key = String(keyOf(item));
      let n = old.get(key);
      if (n) old.delete(key);
      else { n = create(item); n.dataset.key = key; }
      update(n, item);
      const want = prev ? prev.nextSibling : container.firstChild;
      if (n !== want) container.insertBefore(n, want);
      prev = n;
    }
    for (const n of old.values()) n.remove();
  }

  function row(cells) {
    const tr = el('tr');
    for (const cls of cells) tr.appendChild(el('td', cls));
    return tr;
  }

  function bytes(n) {
    if (typeof n !== 'number') return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)) + ' ' + units[i];
  }

  // ---- cluster members ------------------------------------------------------

  // hostOf("10.0.0.5:7946") is "10.0.0.5" ("[::1]:7946" gives "[::1]").
  function hostOf(addr) {
    const i = (addr || '').lastIndexOf(':');
    return i < 0 ? addr || '' : addr.slice(0, i);
  }
  // shortAddr leaves out the host of addr when it is the member's gossip
  // host or a wildcard: ":8080" says enough there.
  function shortAddr(addr, host) {
    if (!addr) return '–';
    const h = hostOf(addr);
    return h === host || h === '' || h === '0.0.0.0' || h === '[::]' ? addr.slice(h.length) : addr;
  }

  function renderCluster(c) {
    const members = (c && c.members) || [];
    const owners = (c && c.owners) || {};
    setText($('self'), c && c.self ? 'node ' + c.self : '');
    const alive = members.filter((m) => m.state === 'alive').length;
    setText($('members-count'), members.length ? `${alive} alive of ${members.length}` : '');
    members.sort((a, b) => a.name.localeCompare(b.name));
    sync($('members').tBodies[0], members, (m) => m.name,
      () => row(['name', 'state', 'addr', 'addr', '']),
      (tr, m) => {
        const td = tr.cells;
        const own = owners[m.name];
        setAttr(tr, 'data-member', m.name);
        setAttr(tr, 'data-state', m.state);
        setClass(tr, m.self ? 'self-row' : '');
        const meta = m.meta || {};
        setText(td[0], m.name + (m.self ? ' (this node)' : ''));
        setText(td[1], m.state);
        setClass(td[1], 'state st-' + m.state);
        setText(td[2], m.addr || '–');
        const host = hostOf(m.addr);
        setText(td[3], `${shortAddr(meta.http, host)}/${shortAddr(meta.admin, host)}`);
        const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;
        setText(td[4], own ? plural(own.partitions.length, 'partition', 'partitions') + ', ' + plural(own.skus.length, 'SKU', 'SKUs') : '–');
        for (const c of td) setAttr(c, 'title', c.textContent);
        setAttr(td[3], 'title', `HTTP ${meta.http || '–'} · admin ${meta.admin || '–'}`);
        setAttr(td[0], 'title', `${m.name}${m.self ? ' (this node)' : ''}, version ${meta.version || 'unknown'}`);
      });
  }

  // ---- shards -----------------------------------------------------------------

  function renderShards(list) {
    list = list || [];
    const up = list.filter((s) => s.reachable).length;
    setText($('shards-count'), list.length ? `${up} reachable of ${list.length}` : '');
    sync($('shards').tBodies[0], list, (s) => s.id,
      () => row(['name', 'addr', 'state', 'state', 'num', 'num', 'num']),
      (tr, s) => {
        const td = tr.cells;
        setAttr(tr, 'data-shard', s.id);
        setAttr(tr, 'data-reachable', s.reachable);
        setText(td[0], s.id);
        setText(td[2], s.state);
        setClass(td[2], 'state st-' + s.state);
        // Sentinel and cluster shards: the kind, the master now, and the
        // failovers this node saw (GET /admin/shards).
        let where = s.addr;
        if (s.kind === 'sentinel') {
          where = `sentinel · master ${s.master || '?'}` + (s.replicas && s.replicas.length ? ` · ${s.replicas.length} replica${s.replicas.length > 1 ? 's' : ''}` : '');
        } else if (s.kind === 'cluster') {
          where = `cluster · ${(s.masters || []).length} masters`;
        }
        if (s.failovers > 0) {
          where += ` · ${s.failovers} failover${s.failovers > 1 ? 's' : ''}` + (s.last_failover ? `, last ${new Date(s.last_failover).toLocaleTimeString()}` : '');
        }
        setText(td[1], where);
        setAttr(td[1], 'title', [s.addr, s.master && 'master ' + s.master, s.replicas && s.replicas.length && 'replicas ' + s.replicas.join(', '),
          s.masters && s.masters.length && 'masters ' + s.masters.join(', '), s.last_failover && 'last failover ' + s.last_failover].filter(Boolean).join('\n'));
        setAttr(tr, 'data-kind', s.kind || 'addr');
        setAttr(tr, 'data-failovers', s.failovers || 0);
        setText(td[3], s.reachable ? 'yes' : 'no' + (s.error ? ': ' + s.error : ''));
        setClass(td[3], 'state ' + (s.reachable ? 'st-ok' : 'st-bad'));
        setAttr(td[3], 'title', s.error || '');
        setText(td[4], num(s.partitions));
        setText(td[5], s.reachable ? num(s.keys) : '–');
        setText(td[6], s.reachable ? bytes(s.memory_bytes) : '–');
      });
  }

  // ---- rates and latency (GET /admin/stats) ---------------------------------
  //
  // The node samples its own counters every second and keeps a minute of
  // samples; the big number of a tile is the figure over that minute, the
  // sparkline one point per second (newest on the right).

  const SVGNS = 'http://www.w3.org/2000/svg';
  const WINDOW = 60; // samples a series holds (GET /admin/stats window_seconds / interval_seconds)
  const SPARK_W = 120;
  const SPARK_H = 26;

  function perSecond(v) {
    if (typeof v !== 'number') return '–';
    if (v === 0) return '0';
    if (v < 10) return v.toFixed(v < 1 ? 2 : 1);
    return nf.format(Math.round(v));
  }
  function seconds(v) {
    if (typeof v !== 'number') return '–';
    if (v < 0.001) return Math.round(v * 1e6) + ' µs';
    if (v < 1) return (v * 1000).toFixed(v < 0.01 ? 2 : 1) + ' ms';
    return v.toFixed(2) + ' s';
  }

  // [key, label, series field, minute field, format, title]
  const RATES = [
    ['deductions', 'deductions/s', 'deductions_per_second', 'deductions_per_second', perSecond, 'deductions that took units (200), per second'],
    ['sold_out', 'sold out/s', 'sold_out_per_second', 'sold_out_per_second', perSecond, 'sold_out answers (409) per second'],
    ['unavailable', '503/s', 'unavailable_per_second', 'unavailable_per_second', perSecond, 'unavailable answers (503: a shard or MySQL did not answer in time) per second'],
    ['shed', '429/s', 'shed_per_second', 'shed_per_second', perSecond, 'requests not admitted (429: over a client or SKU limit) per second'],
    ['p99', 'p99', 'p99_seconds', 'p99_seconds', seconds, '99th percentile of the time to decide a deduction'],
  ];
  const WRITEBACK = [
    ['lag', 'write-back lag', 'writeback_lag_seconds', 'writeback_lag_max_seconds', seconds, 'largest time from a deduction in Redis to its row in MySQL, among the details this node applied (the big number: the minute\'s largest)'],
    ['backlog', 'write-back backlog', 'writeback_backlog', 'writeback_backlog_now', (v) => num(v), 'stream entries not yet confirmed by the broker in the streams this node reads (the big number: now)'],
  ];

  function createRates(defs) {
    const box = el('div', 'rates');
    for (const [key, label, , , , title] of defs) {
      const d = el('div', 'rate');
      d.dataset.rate = key;
      d.title = title;
      const svg = document.createElementNS(SVGNS, 'svg');
      svg.setAttribute('class', 'spark');
      svg.setAttribute('viewBox', `0 0 ${SPARK_W} ${SPARK_H}`);
      svg.setAttribute('preserveAspectRatio', 'none');
      const area = document.createElementNS(SVGNS, 'path');
      area.setAttribute('class', 'spark-area');
      const line = document.createElementNS(SVGNS, 'path');
      line.setAttribute('class', 'spark-line');
      svg.append(area, line);
      d.append(el('span', 'rate-l', label), el('span', 'rate-v'), svg);
      box.appendChild(d);
    }
    return box;
  }

  // updateRates fills a box made by createRates from a view of
  // GET /admin/stats (null: nothing answered within the minute).
  function updateRates(box, defs, view) {
    const minute = (view && view.minute) || {};
    defs.forEach(([key, , series, total, fmt], i) => {
      const d = box.children[i];
      const v = view ? minute[total] : (key === 'p99' ? null : 0);
      setAttr(d, 'data-value', typeof v === 'number' ? v : '');
      setClass(d, 'rate' + ((key === 'unavailable' || key === 'shed') && v > 0 ? ' alarm' : ''));
      setText(d.children[1], fmt(v));
      spark(d.lastChild, (view && view[series]) || []);
    });
  }

  // spark draws values (oldest first, null for "none") as a line over an
  // area, right-aligned in a window of WINDOW points, scaled to the largest.
  function spark(svg, values) {
    const n = values.length;
    let top = 0;
    let points = 0;
    for (const v of values) {
      if (typeof v === 'number') { points++; if (v > top) top = v; }
    }
    setAttr(svg, 'data-points', points);
    setAttr(svg, 'data-max', top);
    const step = SPARK_W / (WINDOW - 1);
    const y = (v) => (SPARK_H - 1 - (top > 0 ? v / top : 0) * (SPARK_H - 3)).toFixed(1);
    let line = '';
    let area = '';
    let run = [];
    const flush = () => {
      if (!run.length) return;
      // A value alone between gaps: a short dash, so that it shows.
      if (run.length === 1) run.unshift([Math.max(0, run[0][0] - step).toFixed(1), run[0][1]]);
      line += 'M' + run.map(([x, yy]) => x + ' ' + yy).join('L');
      area += `M${run[0][0]} ${SPARK_H}L` + run.map(([x, yy]) => x + ' ' + yy).join('L') + `L${run[run.length - 1][0]} ${SPARK_H}Z`;
      run = [];
    };
    values.forEach((v, i) => {
      if (typeof v !== 'number') { flush(); return; }
      run.push([((WINDOW - n + i) * step).toFixed(1), y(v)]);
    });
    flush();
    const [a, l] = svg.children;
    setAttr(a, 'd', area);
    setAttr(l, 'd', line);
  }

  let stats = null; // the last GET /admin/stats

  function renderStats(st) {
    stats = st;
    const box = $('node-rates');
    if (!box.firstChild) {
      box.append(createRates(RATES), createRates(WRITEBACK));
    }
    const node = st && st.node;
    updateRates(box.children[0], RATES, node);
    // The write-back's summary fields sit next to its series.
    updateRates(box.children[1], WRITEBACK, node && Object.assign({}, node, { minute: node }));
    setText($('rates-note'), node ? `${Math.round(node.minute.seconds)} s sampled · ${num(node.minute.answers)} answers` : 'not served by this node');
  }

  // ---- SKUs ---------------------------------------------------------------------

  const STATS = [
    ['total', 'total'], ['pool', 'pool'], ['reserved', 'reserved'], ['confirmed', 'confirmed'],
    ['released', 'released'], ['in_doubt', 'in doubt'], ['available', 'available'], ['backlog', 'backlog'],
  ];

  const STAT_TITLES = {
    pool: 'units in MySQL not yet moved into partitions',
    in_doubt: 'units whose fate is unknown after a shard lost its data',
    available: 'pool plus the levels of the open partitions',
    backlog: 'sync backlog: deduction details still in Redis, not yet written back to MySQL',
  };

  function createSKU() {
    const card = el('article', 'sku');
    const head = el('div', 'sku-head');
    head.append(el('h3', 'sku-name'), el('span', 'badge'), el('span', 'sku-meta'));
    const stats = el('dl', 'stats');
    for (const [key, label] of STATS) {
      const d = el('div', 'stat');
      d.dataset.stat = key;
      d.append(el('dt', '', label), el('dd'));
      if (STAT_TITLES[key]) d.title = STAT_TITLES[key];
      stats.appendChild(d);
    }
    const doubled = el('div', 'stat warn');
    doubled.dataset.stat = 'doubled';
    doubled.append(el('dt', '', 'doubled'), el('dd'));
    stats.appendChild(doubled);
    const table = el('table', 'parts');
    const thead = table.createTHead().insertRow();
    for (const [h, cls, title] of [
      ['ID', 'num w-pid', 'partition id'], ['Shard', 'w-pshard', ''], ['State', 'w-pstate', ''],
      ['Active', 'w-act', 'the sub-domain deductions take from'],
      ['A', 'w-lvl', 'level of sub-domain A; the bar is scaled to the chunk, the tick is the threshold'],
      ['B', 'w-lvl', 'level of sub-domain B; the bar is scaled to the chunk, the tick is the threshold'],
      ['Seq', 'num w-seq', 'deductions recorded'], ['Backlog', 'num w-backlog', 'details not yet handed to write-back'],
    ]) {
      const th = el('th', cls, h);
      if (title) th.title = title;
      thead.appendChild(th);
    }
    table.appendChild(el('tbody'));
    card.append(head, createRates(RATES), stats, table);
    return card;
  }

  function updateSKU(card, s) {
    setAttr(card, 'data-sku', s.sku);
    setAttr(card, 'data-available', s.available);
    setAttr(card, 'data-sold-out', s.sold_out);
    const [name, badge, meta] = card.firstChild.children;
    setText(name, s.sku);
    setText(badge, s.sold_out ? 'sold out' : 'on sale');
    setClass(badge, 'badge ' + (s.sold_out ? 'b-soldout' : 'b-onsale'));
    const rates = card.children[1];
    const view = stats && stats.skus ? stats.skus[s.sku] || null : null;
    updateRates(rates, RATES, view);
    setAttr(rates, 'title', view ? '' : 'no deductions of this SKU answered by this node in the last minute');
    setText(meta, `chunk ${num(s.chunk)} · threshold ${num(s.threshold)} · ${s.partitions.length} partitions · version ${s.version}`);
    for (const d of card.querySelectorAll('.stat')) {
      const key = d.dataset.stat;
      const v = key === 'backlog' ? s.sync && s.sync.backlog : s[key];
      setText(d.lastChild, num(v));
      if (key === 'doubled') setHidden(d, !v);
      if (key === 'in_doubt') setClass(d, v ? 'stat warn' : 'stat');
    }
    const parts = (s.partitions || []).slice().sort((a, b) => a.id - b.id);
    sync(card.querySelector('tbody'), parts, (p) => p.id,
      () => {
        const tr = row(['num', '', 'state', 'active', 'lvl', 'lvl', 'num', 'num']);
        for (const i of [4, 5]) {
          const bar = el('span', 'bar');
          bar.append(el('span', 'fill'), el('span', 'thr'));
          tr.cells[i].append(bar, el('span', 'lvl-n'));
        }
        return tr;
      },
      (tr, p) => updatePartition(tr, s, p));
  }

  function updatePartition(tr, s, p) {
    // The stable attributes tests and scripts read.
    setAttr(tr, 'data-sku', s.sku);
    setAttr(tr, 'data-pid', p.id);
    setAttr(tr, 'data-shard', p.shard);
    setAttr(tr, 'data-state', p.state);
    setAttr(tr, 'data-active', p.active || '');
    setAttr(tr, 'data-a', p.a);
    setAttr(tr, 'data-b', p.b);
    setClass(tr, 'part' + (p.error ? ' part-error' : ''));
    setAttr(tr, 'title', p.error ? 'shard error: ' + p.error : '');
    const td = tr.cells;
    setText(td[0], p.id);
    setText(td[1], p.shard);
    setText(td[2], p.error ? 'error' : p.state);
    setClass(td[2], 'state st-' + (p.error ? 'bad' : p.state));
    setText(td[3], p.active ? p.active.toUpperCase() : '–');
    level(td[4], p.a, s, p.active === 'a');
    level(td[5], p.b, s, p.active === 'b');
    setText(td[6], num(p.seq));
    setText(td[7], num(p.backlog));
  }

  // level draws one sub-domain: a bar scaled to the SKU's chunk (a level
  // above the chunk fills it and is marked), the threshold as a tick, and
  // the number.
  function level(td, v, s, active) {
    const [bar, n] = td.children;
    const chunk = s.chunk > 0 ? s.chunk : 1;
    const frac = Math.max(0, Math.min(1, v / chunk));
    const cls = 'bar' + (active ? ' active' : '') + (v > chunk ? ' over' : '') + (v < s.threshold ? ' low' : '');
    setClass(bar, cls);
    setAttr(bar, 'title', `${num(v)} of chunk ${num(s.chunk)} (threshold ${num(s.threshold)})${active ? ', active' : ''}`);
    const fill = bar.firstChild;
    const w = (frac * 100).toFixed(1) + '%';
    if (fill.style.width !== w) fill.style.width = w;
    const t = (Math.min(1, s.threshold / chunk) * 100).toFixed(1) + '%';
    if (bar.lastChild.style.left !== t) bar.lastChild.style.left = t;
    setText(n, num(v));
  }

  function renderSKUs(list) {
    list = (list || []).slice().sort((a, b) => a.sku.localeCompare(b.sku));
    setText($('skus-count'), list.length ? String(list.length) : '');
    setHidden($('no-skus'), list.length > 0);
    sync($('skus'), list, (s) => s.sku, createSKU, updateSKU);
  }

  // ---- refresh loop ---------------------------------------------------------------

  let lastOK = 0;

  function showErrors(errs) {
    const box = $('error');
    if (!errs.length) {
      setHidden(box, true);
      setText(box, '');
      document.body.classList.remove('stale');
      return;
    }
    let msg = errs.map((e) => e.message).join(' · ');
    if (errs.some((e) => e.status === 401)) {
      if (token) {
        msg = 'The token from #token= was refused. ' + msg;
        try { sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* storage off */ }
      } else if (signedIn) {
        msg = 'Signed in, but this browser does not send its credentials with the page\'s requests: open /#token=<admin or read token> instead. ' + msg;
      }
    }
    setText(box, msg);
    setHidden(box, false);
    document.body.classList.add('stale');
  }

  function showUpdated(ok, took) {
    const u = $('updated');
    const now = new Date();
    if (ok) {
      lastOK = now.getTime();
      setAttr(u, 'data-state', 'ok');
      setText(u, `updated ${now.toLocaleTimeString('en-GB')} · ${took} ms`);
    } else {
      setAttr(u, 'data-state', 'error');
      setText(u, lastOK ? `last update ${new Date(lastOK).toLocaleTimeString('en-GB')} (${Math.round((now - lastOK) / 1000)} s ago)` : 'no data yet');
    }
  }

  async function tick() {
    const started = performance.now();
    const [cluster, shards, skus, st] = await Promise.allSettled([
      api('/admin/cluster'), api('/admin/shards'), api('/admin/skus'), api('/admin/stats'),
    ]);
    const errs = [];
    // Before the SKUs, whose cards show their part of it. A node without
    // /admin/stats (an older build) shows no rates; that is no error.
    if (st.status === 'fulfilled') renderStats(st.value);
    else if (st.reason.status === 404) renderStats(null);
    else errs.push(st.reason);
    // A node without clustering has no /admin/cluster; that is no error.
    if (cluster.status === 'fulfilled') renderCluster(cluster.value);
    else if (cluster.reason.status === 404) renderCluster(null);
    else errs.push(cluster.reason);
    if (shards.status === 'fulfilled') renderShards(shards.value);
    else errs.push(shards.reason);
    if (skus.status === 'fulfilled') renderSKUs(skus.value);
    else errs.push(skus.reason);
    showErrors(errs);
    const took = Math.round(performance.now() - started);
    showUpdated(errs.length === 0, took);
    setTimeout(tick, Math.max(200, REFRESH_MS - took));
  }

  if (!token && !signedIn) {
    // No token: sign in with HTTP Basic first. /login challenges (or
    // accepts the credentials the browser already has for this origin)
    // and sends the browser back here with "#signed-in"; the page's
    // requests then carry the same credentials. Asking /login by
    // navigation, not fetch, gets the browser's prompt reliably, and a
    // path (not a full URL) keeps the credentials of a page opened as
    // http://user:token@host/.
    location.replace('/login');
  } else {
    tick();
  }
})();
