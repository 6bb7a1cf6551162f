// The spate dashboard: one page, hash routes, plain DOM. It reads the JobManager's REST
// API (Flink's paths) and refreshes the page on view every second.
'use strict';

const REFRESH_MS = 1000;
const LONG_MIN = -9223372036854775808;
const LONG_MAX = 9223372036854775807;

const $ = (sel, el = document) => el.querySelector(sel);
const $$ = (sel, el = document) => Array.from(el.querySelectorAll(sel));

function esc(v) {
  return String(v ?? '').replace(/[&<>"']/g, c => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

let askedForSecret = false;

async function api(path, opts) {
  const r = await fetch(path, opts);
  if (r.status === 401 && !askedForSecret) {
    // The JobManager requires security.rest.secret: ask once, keep it in a cookie
    // (sent with every request to this origin), and load the page again.
    askedForSecret = true;
    const t = window.prompt('This JobManager requires its REST secret (security.rest.secret):');
    if (t) {
      document.cookie = 'spate-token=' + encodeURIComponent(t) + '; path=/; SameSite=Strict';
      location.reload();
    }
  }
  const text = await r.text();
  let v = null;
  try { v = text ? JSON.parse(text) : null; } catch (e) { v = null; }
  if (!r.ok) {
    const msg = v && v.errors && v.errors.length ? v.errors[0] : `${r.status} ${r.statusText}`;
    throw new Error(`${path}: ${msg}`);
  }
  return v;
}

// ---- formatting ----

function num(n) {
  if (n === undefined || n === null || n < 0) return '-';
  if (n >= 1e9) return (n / 1e9).toFixed(2) + 'G';
  if (n >= 1e6) return (n / 1e6).toFixed(2) + 'M';
  if (n >= 1e4) return (n / 1e3).toFixed(1) + 'k';
  return String(Math.round(n));
}
function rate(r) { return r === undefined || r === null ? '-' : num(r) + '/s'; }
function ns(v) {
  if (v === undefined || v === null || !(v > 0)) return '-';
  if (v >= 1e9) return (v / 1e9).toFixed(2) + ' s';
  if (v >= 1e6) return (v / 1e6).toFixed(2) + ' ms';
  return (v / 1e3).toFixed(2) + ' µs';
}
function ms(v) {
  if (v === undefined || v === null || v < 0) return '-';
  if (v < 1000) return v + ' ms';
  const s = Math.floor(v / 1000);
  if (s < 60) return (v / 1000).toFixed(1) + ' s';
  const m = Math.floor(s / 60), h = Math.floor(m / 60), d = Math.floor(h / 24);
  if (d > 0) return `${d}d ${h % 24}h`;
  if (h > 0) return `${h}h ${m % 60}m`;
  return `${m}m ${s % 60}s`;
}
function time(epochMs) {
  if (!epochMs || epochMs < 0) return '-';
  const d = new Date(epochMs);
  return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, '');
}
function bytes(b) {
  if (b === undefined || b === null || b < 0) return '-';
  if (b >= 1 << 30) return (b / (1 << 30)).toFixed(2) + ' GiB';
  if (b >= 1 << 20) return (b / (1 << 20)).toFixed(2) + ' MiB';
  if (b >= 1 << 10) return (b / (1 << 10)).toFixed(1) + ' KiB';
  return b + ' B';
}
function badge(state) { return `<span class="badge ${esc(state)}">${esc(state)}</span>`; }
function watermark(ms) {
  if (ms === undefined || ms === null || ms <= LONG_MIN || Number.isNaN(ms)) return 'none';
  if (ms >= LONG_MAX) return 'end of input';
  return time(ms) + '.' + String(Math.floor(ms % 1000)).padStart(3, '0');
}
function metricMap(list) {
  const m = {};
  for (const x of list || []) m[x.id] = Number(x.value);
  return m;
}

// ---- routing ----

let current = null; // { refresh: async fn, name }
let timer = null;
let generation = 0;

function route() {
  const h = location.hash.replace(/^#\/?/, '') || 'overview';
  const parts = h.split('/');
  generation += 1;
  if (timer) clearTimeout(timer);
  let page;
  if (parts[0] === 'overview') page = overviewPage();
  else if (parts[0] === 'jobs' && (parts[1] === 'running' || parts[1] === 'completed')) page = jobsPage(parts[1]);
  else if (parts[0] === 'jobs' && parts[1]) page = jobPage(parts[1], parts[2] || 'overview');
  else if (parts[0] === 'taskmanagers' && parts[1]) page = taskManagerPage(decodeURIComponent(parts[1]));
  else if (parts[0] === 'taskmanagers') page = taskManagersPage();
  else if (parts[0] === 'jobmanager') page = jobManagerPage();
  else page = { name: '', refresh: async live => { $('#page').innerHTML = `<h1>Not found</h1><p>No page ${esc(h)}.</p>`; } };
  for (const a of $$('#side a')) a.classList.toggle('active', a.dataset.nav === page.name);
  current = page;
  $('#page').innerHTML = '';
  $('#page')._html = '';
  tick(generation);
}

async function tick(gen) {
  if (gen !== generation) return;
  try {
    await current.refresh(() => gen === generation);
    if (gen === generation) setStatus('');
  } catch (e) {
    if (gen === generation) setStatus(e.message);
  }
  if (gen === generation) timer = setTimeout(() => tick(gen), REFRESH_MS);
}

// Replaces an element's content only when it changed, so that what a user is
// pointing at or clicking survives the refresh when nothing on it moved.
function setHTML(el, html) {
  if (el && el._html !== html) {
    el.innerHTML = html;
    el._html = html;
  }
}

function setStatus(msg) {
  const s = $('#status');
  s.textContent = msg;
  s.className = msg ? 'status error' : 'status';
}

// Clicks on rows and graph boxes, by their data attributes (no inline handlers: ids
// come from peers and are never run as code).
document.addEventListener('click', e => {
  const t = e.target;
  if (!(t instanceof Element)) return;
  const vertex = t.closest('[data-vertex]');
  if (vertex && (vertex.closest('.graph') || vertex.closest('#vertices'))) {
    selectVertex(vertex.dataset.vertex);
    return;
  }
  const row = t.closest('[data-href]');
  if (row && !t.closest('a')) location.hash = row.dataset.href;
});

window.addEventListener('hashchange', route);
window.addEventListener('DOMContentLoaded', () => {
  api('/config').then(c => { $('#version').textContent = c['flink-version'] || ''; }).catch(() => {});
  route();
});

// ---- overview ----

function jobsTable(jobs, id) {
  if (!jobs.length) return `<div class="empty" id="${id}">No jobs.</div>`;
  const rows = jobs.map(j => `<tr class="clickable" data-job="${esc(j.jid)}" data-href="#/jobs/${esc(encodeURIComponent(j.jid))}">
    <td><a href="#/jobs/${esc(encodeURIComponent(j.jid))}">${esc(j.name)}</a><div class="muted">${esc(j.jid)}</div></td>
    <td>${time(j['start-time'])}</td><td class="num">${ms(j.duration)}</td>
    <td>${time(j['end-time'])}</td><td class="num">${j.tasks ? j.tasks.total : '-'}</td>
    <td>${badge(j.state)}</td></tr>`).join('');
  return `<table id="${id}"><thead><tr><th>Job</th><th>Start</th><th class="num">Duration</th><th>End</th><th class="num">Tasks</th><th>Status</th></tr></thead><tbody>${rows}</tbody></table>`;
}

const ENDED = ['FINISHED', 'CANCELED', 'FAILED'];

function overviewPage() {
  return {
    name: 'overview',
    refresh: async live => {
      const [o, jobs] = await Promise.all([api('/overview'), api('/jobs/overview')]);
      if (!live()) return;
      const running = jobs.jobs.filter(j => !ENDED.includes(j.state));
      const ended = jobs.jobs.filter(j => ENDED.includes(j.state));
      const card = (label, value, id) => `<div class="card" id="${id}"><div class="label">${label}</div><div class="value">${esc(value)}</div></div>`;
      setHTML($('#page'), `<h1>Overview</h1>
        <div class="cards">
          ${card('Task Managers', o.taskmanagers, 'card-taskmanagers')}
          ${card('Task Slots', o['slots-total'], 'card-slots')}
          ${card('Available Slots', o['slots-available'], 'card-slots-available')}
          ${card('Running Jobs', o['jobs-running'], 'card-running')}
          ${card('Finished', o['jobs-finished'], 'card-finished')}
          ${card('Canceled', o['jobs-cancelled'], 'card-canceled')}
          ${card('Failed', o['jobs-failed'], 'card-failed')}
        </div>
        <h2>Running Jobs</h2>${jobsTable(running, 'running-jobs')}
        <h2>Completed Jobs</h2>${jobsTable(ended, 'completed-jobs')}`);
    },
  };
}

function jobsPage(which) {
  return {
    name: which,
    refresh: async live => {
      const jobs = (await api('/jobs/overview')).jobs;
      if (!live()) return;
      const pick = jobs.filter(j => (which === 'running') !== ENDED.includes(j.state));
      pick.sort((a, b) => b['start-time'] - a['start-time']);
      setHTML($('#page'), `<h1>${which === 'running' ? 'Running' : 'Completed'} Jobs</h1>${jobsTable(pick, which + '-jobs')}`);
    },
  };
}

// ---- task managers ----

// A slot's busy ratio between its TaskManager's last two reports, as " (35% busy)".
function busy(slot) {
  return slot.busyRatio === null || slot.busyRatio === undefined ? '' : ` (${(slot.busyRatio * 100).toFixed(0)}% busy)`;
}

function taskManagersPage() {
  return {
    name: 'taskmanagers',
    refresh: async live => {
      const tms = (await api('/taskmanagers')).taskmanagers;
      if (!live()) return;
      const now = Date.now();
      const rows = tms.map(t => `<tr class="clickable" data-tm="${esc(t.id)}" data-href="#/taskmanagers/${esc(encodeURIComponent(t.id))}">
        <td><a href="#/taskmanagers/${esc(encodeURIComponent(t.id))}">${esc(t.id)}</a></td><td>${esc(t.dataAddress || '')}</td>
        <td class="num">${t.slotsNumber}</td><td class="num">${t.freeSlots}</td>
        <td>${(t.slots || []).map(s => (s.core === null || s.core === undefined ? 'unpinned' : 'core ' + s.core) + busy(s)).join(', ')}</td>
        <td class="num">${ms(Math.max(0, now - t.timeSinceLastHeartbeat))}</td>
        <td>${esc(t.network ? t.network.transport : '')}</td></tr>`).join('');
      setHTML($('#page'), `<h1>Task Managers</h1>` + (tms.length
        ? `<table id="taskmanagers"><thead><tr><th>Id</th><th>Data address</th><th class="num">Slots</th><th class="num">Free</th><th>Slot cores</th><th class="num">Last heartbeat</th><th>Transport</th></tr></thead><tbody>${rows}</tbody></table>`
        : `<div class="empty" id="taskmanagers">No TaskManager has registered.</div>`));
    },
  };
}

function taskManagerPage(id) {
  return {
    name: 'taskmanagers',
    refresh: async live => {
      const [t, jobs] = await Promise.all([
        api('/taskmanagers/' + encodeURIComponent(id)),
        api('/jobs/overview'),
      ]);
      if (!live()) return;
      const names = {};
      for (const j of jobs.jobs) names[j.jid] = j.name;
      const slots = (t.slots || []).map(s => `<tr data-slot="${s.index}"><td class="num">${s.index}</td>
        <td>${s.core === null || s.core === undefined ? 'unpinned' : 'core ' + s.core}</td>
        <td class="num" data-f="busy">${s.busyRatio === null || s.busyRatio === undefined ? '-' : (s.busyRatio * 100).toFixed(0) + '%'}</td>
        <td>${s.job ? `<a href="#/jobs/${esc(encodeURIComponent(s.job))}">${esc(names[s.job] || s.job)}</a>` : '<span class="muted">free</span>'}</td></tr>`).join('');
      const n = t.network || {};
      const kv = [
        ['Data address', t.dataAddress], ['Slots', t.slotsNumber], ['Free slots', t.freeSlots],
        ['CPU cores', t.hardware ? t.hardware.cpuCores : '-'],
        ['Last heartbeat', time(t.timeSinceLastHeartbeat)],
        ['Network transport', n.transport], ['Connections', n.connections],
        ['Bytes in / out', `${bytes(n.bytesIn)} / ${bytes(n.bytesOut)}`],
        ['Frames in / out', `${num(n.framesIn)} / ${num(n.framesOut)}`],
        ['Network failures', n.failures],
      ].map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(v)}</td></tr>`).join('');
      setHTML($('#page'), `<h1>Task Manager <span class="muted">${esc(t.id)}</span></h1>
        <h2>Slots</h2><table id="slots"><thead><tr><th class="num">Slot</th><th>Pinned to</th><th class="num">Busy</th><th>Job</th></tr></thead><tbody>${slots}</tbody></table>
        <h2>Details</h2><table class="kv" id="tm-details"><tbody>${kv}</tbody></table>`);
    },
  };
}

function jobManagerPage() {
  return {
    name: 'jobmanager',
    refresh: async live => {
      if ($('#jm-config')) return; // static while on view
      const [conf, env] = await Promise.all([api('/jobmanager/config'), api('/jobmanager/environment')]);
      if (!live()) return;
      const rows = conf.map(c => `<tr><td>${esc(c.key)}</td><td>${esc(c.value)}</td></tr>`).join('');
      const envRows = (env.classpath || []).map(c => `<tr><td colspan="2">${esc(c)}</td></tr>`).join('');
      const jvm = env.jvm || {};
      $('#page').innerHTML = `<h1>Job Manager</h1><h2>Configuration</h2>
        <table class="kv" id="jm-config"><thead><tr><th>Key</th><th>Value</th></tr></thead><tbody>${rows}</tbody></table>
        <h2>Environment</h2><table class="kv"><tbody><tr><td>Version</td><td>${esc(jvm.version || '')}</td></tr>${envRows}</tbody></table>`;
    },
  };
}

// ---- a job ----

// Layers the job graph (longest path from the sources), orders each layer by its
// inputs' positions, and places the vertices in columns, sources on the left.
function layout(nodes) {
  const W = 236, H = 128, GX = 70, GY = 22, PAD = 16;
  const byId = {};
  nodes.forEach(n => { byId[n.id] = n; });
  const level = {};
  const visiting = {};
  const lev = id => {
    if (level[id] !== undefined) return level[id];
    if (visiting[id]) return 0;
    visiting[id] = true;
    const ins = (byId[id].inputs || []).filter(i => byId[i.id]);
    const l = ins.length ? 1 + Math.max(...ins.map(i => lev(i.id))) : 0;
    level[id] = l;
    return l;
  };
  nodes.forEach(n => lev(n.id));
  const layers = [];
  for (const n of nodes) (layers[level[n.id]] = layers[level[n.id]] || []).push(n.id);
  const row = {};
  layers.forEach((ids, li) => {
    if (li > 0) {
      const bary = id => {
        const ins = (byId[id].inputs || []).filter(i => row[i.id] !== undefined);
        return ins.length ? ins.reduce((s, i) => s + row[i.id], 0) / ins.length : 0;
      };
      ids.sort((a, b) => bary(a) - bary(b));
    }
    ids.forEach((id, r) => { row[id] = r; });
  });
  const tallest = Math.max(1, ...layers.map(l => (l || []).length));
  const pos = {};
  layers.forEach((ids, li) => {
    const offset = (tallest - ids.length) * (H + GY) / 2;
    ids.forEach((id, r) => { pos[id] = { x: PAD + li * (W + GX), y: PAD + offset + r * (H + GY) }; });
  });
  return { pos, W, H, width: PAD * 2 + layers.length * (W + GX) - GX, height: PAD * 2 + tallest * (H + GY) - GY };
}

function graphSvg(plan) {
  const nodes = plan.nodes || [];
  const L = layout(nodes);
  const edges = [];
  for (const n of nodes) {
    for (const i of n.inputs || []) {
      const a = L.pos[i.id], b = L.pos[n.id];
      if (!a || !b) continue;
      const x1 = a.x + L.W, y1 = a.y + L.H / 2, x2 = b.x, y2 = b.y + L.H / 2, mx = (x1 + x2) / 2;
      edges.push(`<path class="edge" d="M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2 - 6},${y2}" marker-end="url(#arrow)"/>`);
      edges.push(`<text class="edge-label" x="${mx}" y="${(y1 + y2) / 2 - 4}" text-anchor="middle">${esc(i.ship_strategy)}</text>`);
    }
  }
  const boxes = nodes.map(n => {
    const p = L.pos[n.id];
    const name = n.description || n.id;
    const short = name.length > 34 ? name.slice(0, 33) + '…' : name;
    return `<g class="vertex" data-vertex="${esc(n.id)}" transform="translate(${p.x},${p.y})">
      <title>${esc(name)}</title>
      <rect width="${L.W}" height="${L.H}"></rect>
      <text class="title" x="10" y="18">${esc(short)}</text>
      <text class="sub" x="10" y="35" data-f="status">Parallelism ${n.parallelism}</text>
      <text x="10" y="52" data-f="records">in - · out -</text>
      <text x="10" y="69" data-f="rates">-</text>
      <text class="sub" x="10" y="86" data-f="extra"></text>
      <text class="sub" x="10" y="103" data-f="hop"></text>
      <text class="sub" x="10" y="120" data-f="e2e"></text>
    </g>`;
  }).join('');
  return `<svg id="job-graph" width="${L.width}" height="${L.height}" viewBox="0 0 ${L.width} ${L.height}">
    <defs><marker id="arrow" viewBox="0 0 10 10" refX="6" refY="5" markerWidth="8" markerHeight="8" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#829ab1"/></marker></defs>
    ${edges.join('')}${boxes}</svg>`;
}

let selectedVertex = null;
function selectVertex(id) {
  selectedVertex = selectedVertex === id ? null : id;
  for (const g of $$('.graph .vertex')) g.classList.toggle('selected', g.dataset.vertex === selectedVertex);
  for (const tr of $$('#vertices tr[data-vertex]')) tr.classList.toggle('selected', tr.dataset.vertex === selectedVertex);
  if (current && current.subtasks) current.subtasks().catch(e => setStatus(e.message));
}
window.selectVertex = selectVertex;

function jobPage(jid, tab) {
  const page = { name: '', jid };
  selectedVertex = null;
  let graphFor = null;      // the plan the graph was drawn for
  let prev = null;          // { at, records: {vid: [in, out]} } for rates
  let rates = {};
  let slow = { at: 0, bp: {}, wm: {}, lat: {}, hop: {} };

  const header = (j, lat) => {
    const ended = ENDED.includes(j.state);
    const l = lat || {};
    const latency = l.latency_count > 0
      ? `<div class="latency" id="job-latency"><span>latency p50 <b>${ns(l.latency_p50)}</b></span><span>p99 <b>${ns(l.latency_p99)}</b></span><span>p99.9 <b>${ns(l.latency_p999)}</b></span><span>p99.99 <b>${ns(l.latency_p9999)}</b></span><span>max <b>${ns(l.latency_max)}</b></span><span class="muted">${num(l.latency_count)} samples</span></div>`
      : `<div class="latency muted" id="job-latency">no latency measured</div>`;
    const title = `<div class="jobhead"><h1 id="job-name">${esc(j.name)}</h1><span id="job-state">${badge(j.state)}</span>
      <span class="muted">${esc(j.jid)}</span>
      <div class="actions">${ended ? '' : `
        <input type="text" id="savepoint-dir" placeholder="savepoint directory (default: state.savepoints.dir)">
        <button id="savepoint-btn" onclick="jobAction('savepoint')">Savepoint</button>
        <button id="stop-btn" onclick="jobAction('stop')">Stop with savepoint</button>
        <button id="cancel-btn" class="danger" onclick="jobAction('cancel')">Cancel job</button>`}</div></div>`;
    const stats = `<div class="cards">
        <div class="card"><div class="label">Started</div><div class="value" style="font-size:15px">${time(j['start-time'])}</div></div>
        <div class="card"><div class="label">Duration</div><div class="value" id="job-duration">${ms(j.duration)}</div></div>
        <div class="card"><div class="label">Restarts</div><div class="value" id="job-restarts">${j.restarts ?? 0}</div></div>
        <div class="card"><div class="label">Tasks</div><div class="value">${j.tasks ? `${j.tasks.running}/${j.tasks.total}` : '-'}</div></div>
      </div>${latency}`;
    return { title, stats };
  };

  const vertexRows = j => j.vertices.map(v => {
    const m = v.metrics || {};
    const r = rates[v.id] || [];
    const bp = slow.bp[v.id];
    const wm = slow.wm[v.id];
    const lat = slow.lat[v.id];
    return `<tr class="clickable${v.id === selectedVertex ? ' selected' : ''}" data-vertex="${esc(v.id)}">
      <td>${esc(v.name)}</td><td>${badge(v.status)}</td><td class="num">${v.parallelism}</td>
      <td class="num" data-f="in">${num(m['read-records'])}</td><td class="num">${rate(r[0])}</td>
      <td class="num" data-f="out">${num(m['write-records'])}</td><td class="num">${rate(r[1])}</td>
      <td data-f="backpressure">${bp ? `<span class="bp-${esc(bp.level)}">${esc(bp.level)} ${(bp.ratio * 100).toFixed(0)}%</span>` : '-'}</td>
      <td data-f="watermark">${wm === undefined ? '-' : esc(watermark(wm))}</td>
      <td class="num" data-f="from-source">${slow.hop[v.id] ? ns(slow.hop[v.id].latencyFromSource_p50) + ' / ' + ns(slow.hop[v.id].latencyFromSource_p99) : '-'}</td>
      <td class="num" data-f="latency">${lat ? ns(lat.latency_p99) : '-'}</td></tr>`;
  }).join('');

  const updateGraph = j => {
    for (const v of j.vertices) {
      const g = $(`.graph .vertex[data-vertex="${v.id}"]`);
      if (!g) continue;
      const m = v.metrics || {};
      const r = rates[v.id] || [];
      const bp = slow.bp[v.id];
      const wm = slow.wm[v.id];
      const lat = slow.lat[v.id];
      g.classList.remove('bp-low', 'bp-high');
      if (bp && bp.level !== 'ok') g.classList.add('bp-' + bp.level);
      $('[data-f=status]', g).textContent = `Parallelism ${v.parallelism} · ${v.status}`;
      $('[data-f=records]', g).textContent = `in ${num(m['read-records'])} · out ${num(m['write-records'])}`;
      $('[data-f=rates]', g).textContent = `${rate(r[0])} in · ${rate(r[1])} out`;
      const extra = [];
      if (bp) extra.push(`backpressure ${bp.level} ${(bp.ratio * 100).toFixed(0)}%`);
      if (wm !== undefined && wm > LONG_MIN) extra.push(wm >= LONG_MAX ? 'wm end of input' : `wm ${watermark(wm).slice(11)}`);
      const hop = slow.hop[v.id];
      $('[data-f=extra]', g).textContent = extra.join(' · ');
      $('[data-f=hop]', g).textContent = hop ? `from source p50 ${ns(hop.latencyFromSource_p50)} p99 ${ns(hop.latencyFromSource_p99)}` : '';
      $('[data-f=e2e]', g).textContent = lat ? `end to end p50 ${ns(lat.latency_p50)} p99 ${ns(lat.latency_p99)}` : '';
    }
  };

  // Back-pressure, watermarks and the sinks' latency: one request per vertex each,
  // every other refresh.
  const refreshSlow = async j => {
    if (Date.now() - slow.at < 2 * REFRESH_MS - 100) return;
    slow.at = Date.now();
    const hasOutputs = new Set();
    for (const n of j.plan.nodes || []) for (const i of n.inputs || []) hasOutputs.add(i.id);
    const base = `/jobs/${jid}/vertices/`;
    await Promise.all(j.vertices.map(async v => {
      const [bp, wm, lat] = await Promise.all([
        api(base + v.id + '/backpressure').catch(() => null),
        api(base + v.id + '/watermarks').catch(() => null),
        api(base + v.id + '/metrics?get=latency_count,latency_p50,latency_p99,latency_max,latencyFromSource_count,latencyFromSource_p50,latencyFromSource_p99').catch(() => null),
      ]);
      if (bp && bp.subtasks && bp.subtasks.length) {
        const ratio = Math.max(...bp.subtasks.map(s => s.ratio || 0));
        slow.bp[v.id] = { level: bp['backpressure-level'] || 'ok', ratio };
      }
      if (wm && wm.length) {
        const vals = wm.map(w => Number(w.value));
        slow.wm[v.id] = Math.min(...vals);
      }
      const lm = metricMap(lat);
      if (lm.latency_count > 0 && !hasOutputs.has(v.id)) slow.lat[v.id] = lm;
      if (lm.latencyFromSource_count > 0) slow.hop[v.id] = lm;
    }));
  };

  page.subtasks = async () => {
    const box = $('#subtasks');
    if (!box) return;
    if (!selectedVertex) { setHTML(box, ''); return; }
    const want = selectedVertex;
    const v = await api(`/jobs/${jid}/vertices/${want}`);
    if (selectedVertex !== want || !document.body.contains(box)) return;
    const rows = (v.subtasks || []).map(s => `<tr><td class="num">${s.subtask}</td><td>${badge(s.status)}</td>
      <td class="num">${s.attempt}</td><td>${esc(s['taskmanager-id'] || s.endpoint || '')}</td>
      <td class="num">${num(s.metrics['read-records'])}</td><td class="num">${num(s.metrics['write-records'])}</td>
      <td class="num">${ms(s.duration)}</td></tr>`).join('');
    // Each chained operator's own time per record (sampled with the latency markers).
    const ids = await api(`/jobs/${jid}/vertices/${want}/metrics`).catch(() => []);
    const ops = (ids || []).map(m => m.id).filter(id => id.endsWith('.timePerRecord_p50'))
      .map(id => id.slice(0, -'.timePerRecord_p50'.length));
    let opRows = '';
    if (ops.length) {
      const get = ops.flatMap(o => ['p50', 'p99', 'count'].map(q => `${o}.timePerRecord_${q}`));
      const vals = metricMap(await api(`/jobs/${jid}/vertices/${want}/metrics?get=${encodeURIComponent(get.join(','))}`).catch(() => []));
      opRows = ops.map(o => `<tr><td>${esc(o)}</td><td class="num">${ns(vals[o + '.timePerRecord_p50'])}</td>
        <td class="num">${ns(vals[o + '.timePerRecord_p99'])}</td><td class="num">${num(vals[o + '.timePerRecord_count'])}</td></tr>`).join('');
    }
    if (selectedVertex !== want || !document.body.contains(box)) return;
    const opTable = opRows ? `<h2>Operators of ${esc(v.name)}</h2><table id="operator-table"><thead><tr><th>Operator</th><th class="num" title="Its own time per record on sampled batches (metrics.latency.interval)">Time per record p50</th><th class="num">p99</th><th class="num">Batches</th></tr></thead><tbody>${opRows}</tbody></table>` : '';
    setHTML(box, `<h2>Subtasks of ${esc(v.name)}</h2><table id="subtask-table"><thead><tr><th class="num">#</th><th>Status</th><th class="num">Attempt</th><th>Task Manager</th><th class="num">Records in</th><th class="num">Records out</th><th class="num">Duration</th></tr></thead><tbody>${rows}</tbody></table>${opTable}`);
  };

  const overviewTab = async (j, live) => {
    const now = Date.now();
    const recs = {};
    for (const v of j.vertices) recs[v.id] = [v.metrics['read-records'], v.metrics['write-records']];
    if (prev && now > prev.at) {
      const dt = (now - prev.at) / 1000;
      for (const v of j.vertices) {
        const p = prev.records[v.id];
        if (p) rates[v.id] = [(recs[v.id][0] - p[0]) / dt, (recs[v.id][1] - p[1]) / dt].map(x => Math.max(0, x));
      }
    }
    prev = { at: now, records: recs };
    await refreshSlow(j);
    if (!live()) return;
    if (graphFor !== JSON.stringify(j.plan) || !$('#job-graph')) {
      graphFor = JSON.stringify(j.plan);
      $('#tab').innerHTML = `<div class="graph">${graphSvg(j.plan)}</div>
        <h2>Vertices</h2><table id="vertices"><thead><tr><th>Name</th><th>Status</th><th class="num">Parallelism</th><th class="num">Records in</th><th class="num">Rate in</th><th class="num">Records out</th><th class="num">Rate out</th><th>Backpressure</th><th>Watermark</th><th class="num" title="How long after their sources emitted them latency markers reached the vertex (metrics.latency.interval)">From source p50 / p99</th><th class="num">Latency p99</th></tr></thead><tbody></tbody></table>
        <div id="subtasks"></div>`;
    }
    setHTML($('#vertices tbody'), vertexRows(j));
    updateGraph(j);
    for (const g of $$('.graph .vertex')) g.classList.toggle('selected', g.dataset.vertex === selectedVertex);
    await page.subtasks();
  };

  const exceptionsTab = async live => {
    const e = await api(`/jobs/${jid}/exceptions`);
    if (!live()) return;
    const entries = (e.exceptionHistory && e.exceptionHistory.entries) || [];
    setHTML($('#tab'), entries.length
      ? `<div id="exceptions">${entries.map(x => `<div class="exception"><h2>${time(x.timestamp)} · ${esc(x.taskName || 'job')}</h2>
          <div class="muted">${esc(x.exceptionName)}${x.taskManagerId ? ' on ' + esc(x.taskManagerId) : ''}</div>
          <pre>${esc(x.stacktrace)}</pre></div>`).join('')}</div>`
      : `<div class="empty" id="exceptions">No exceptions.</div>`);
  };

  const checkpointsTab = async live => {
    const [c, conf] = await Promise.all([
      api(`/jobs/${jid}/checkpoints`),
      api(`/jobs/${jid}/checkpoints/config`).catch(() => null),
    ]);
    if (!live()) return;
    const n = c.counts || {};
    const last = c.latest && c.latest.completed;
    const restored = c.latest && c.latest.restored;
    const hist = (c.history || []).map(h => `<tr><td class="num">${h.id}</td><td>${badge(h.status)}</td>
      <td>${h.is_savepoint ? 'savepoint' : 'checkpoint'}</td><td>${time(h.trigger_timestamp)}</td>
      <td class="num">${ms(h.end_to_end_duration)}</td><td class="num">${bytes(h.state_size)}</td>
      <td class="num">${h.num_acknowledged_subtasks}/${h.num_subtasks}</td></tr>`).join('');
    const cf = conf ? [
      ['Mode', conf.mode], ['Interval', ms(conf.interval)], ['Timeout', ms(conf.timeout)],
      ['Minimum pause', ms(conf.min_pause)], ['Max concurrent', conf.max_concurrent],
      ['Tolerable failures', conf.tolerable_failed_checkpoints],
    ].map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(v)}</td></tr>`).join('') : '';
    setHTML($('#tab'), `<div class="cards" id="checkpoint-counts">
        <div class="card"><div class="label">Triggered</div><div class="value">${n.total ?? 0}</div></div>
        <div class="card"><div class="label">In progress</div><div class="value">${n.in_progress ?? 0}</div></div>
        <div class="card"><div class="label">Completed</div><div class="value" id="checkpoints-completed">${n.completed ?? 0}</div></div>
        <div class="card"><div class="label">Failed</div><div class="value">${n.failed ?? 0}</div></div>
        <div class="card"><div class="label">Restored</div><div class="value">${n.restored ?? 0}</div></div></div>
      ${last ? `<h2>Latest completed</h2><table class="kv" id="checkpoint-latest"><tbody>
        <tr><td>Id</td><td>${last.id}</td></tr><tr><td>Completed</td><td>${time(last.latest_ack_timestamp)}</td></tr>
        <tr><td>End to end</td><td>${ms(last.end_to_end_duration)}</td></tr><tr><td>State size</td><td>${bytes(last.state_size)}</td></tr>
        <tr><td>Path</td><td>${esc(last.external_path)}</td></tr></tbody></table>` : ''}
      ${restored ? `<p>Restored from ${restored.id} (${esc(restored.external_path)}).</p>` : ''}
      <h2>History</h2>${hist ? `<table id="checkpoint-history"><thead><tr><th class="num">Id</th><th>Status</th><th>Type</th><th>Triggered</th><th class="num">Duration</th><th class="num">Size</th><th class="num">Acknowledged</th></tr></thead><tbody>${hist}</tbody></table>` : '<div class="empty">No checkpoints.</div>'}
      ${cf ? `<h2>Configuration</h2><table class="kv"><tbody>${cf}</tbody></table>` : ''}`);
  };

  const configurationTab = async live => {
    if ($('#job-config')) return;
    const c = await api(`/jobs/${jid}/config`);
    if (!live()) return;
    const ec = c['execution-config'] || {};
    const rows = Object.entries(ec).filter(([k]) => k !== 'user-config')
      .concat(Object.entries(ec['user-config'] || {}))
      .map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(typeof v === 'object' ? JSON.stringify(v) : v)}</td></tr>`).join('');
    $('#tab').innerHTML = `<table class="kv" id="job-config"><tbody>${rows}</tbody></table>`;
  };

  page.refresh = async live => {
    const [j, lat] = await Promise.all([
      api(`/jobs/${jid}`),
      api(`/jobs/${jid}/metrics?get=latency_count,latency_p50,latency_p99,latency_p999,latency_p9999,latency_max`).catch(() => null),
    ]);
    // The user went elsewhere while this was in flight: draw nothing.
    if (!live()) return;
    if (!$('#job-title')) {
      $('#page')._html = null;
      $('#page').innerHTML = `<div id="job-title"></div><div id="job-stats"></div>
        <div id="action-result" class="muted"></div>
        <div class="tabs">${['overview', 'exceptions', 'checkpoints', 'configuration'].map(t =>
          `<a href="#/jobs/${esc(jid)}/${t}" class="${t === tab ? 'active' : ''}" data-tab="${t}">${t[0].toUpperCase() + t.slice(1)}</a>`).join('')}</div>
        <div id="tab"></div>`;
    }
    const head = header(j, metricMap(lat));
    // The title (name, state, buttons) changes with the job's state only: redrawn
    // then, keeping what the user typed.
    const keep = $('#savepoint-dir') ? $('#savepoint-dir').value : '';
    const focused = document.activeElement && document.activeElement.id === 'savepoint-dir';
    setHTML($('#job-title'), head.title);
    if ($('#savepoint-dir') && $('#savepoint-dir').value !== keep) {
      $('#savepoint-dir').value = keep;
      if (focused) $('#savepoint-dir').focus();
    }
    setHTML($('#job-stats'), head.stats);
    if (tab === 'exceptions') await exceptionsTab(live);
    else if (tab === 'checkpoints') await checkpointsTab(live);
    else if (tab === 'configuration') await configurationTab(live);
    else await overviewTab(j, live);
  };
  return page;
}

// Cancel (in two clicks), savepoint and stop with savepoint, for the job on view.
async function jobAction(what) {
  const jid = current && current.jid;
  if (!jid) return;
  const out = $('#action-result');
  const dir = ($('#savepoint-dir') && $('#savepoint-dir').value.trim()) || null;
  try {
    if (what === 'cancel') {
      const b = $('#cancel-btn');
      if (!b.classList.contains('armed')) {
        b.classList.add('armed');
        b.textContent = 'Confirm cancel';
        return;
      }
      b.disabled = true;
      await api(`/jobs/${jid}?mode=cancel`, { method: 'PATCH' });
      out.textContent = 'Cancelling…';
      return;
    }
    const body = what === 'stop' ? { targetDirectory: dir, drain: false } : { 'target-directory': dir, 'cancel-job': false };
    const r = await api(`/jobs/${jid}/${what === 'stop' ? 'stop' : 'savepoints'}`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
    });
    out.textContent = `${what === 'stop' ? 'Stopping with a savepoint' : 'Savepoint'} requested (${r['request-id']})…`;
    for (let i = 0; i < 600; i++) {
      await new Promise(res => setTimeout(res, 500));
      const s = await api(`/jobs/${jid}/savepoints/${r['request-id']}`);
      if (s.status && s.status.id === 'COMPLETED') {
        const o = s.operation || {};
        const msg = o.location ? `Savepoint at ${o.location}` : `Savepoint failed: ${JSON.stringify(o['failure-cause'] || o)}`;
        const el = $('#action-result');
        if (el) el.textContent = msg;
        return;
      }
    }
  } catch (e) {
    const el = $('#action-result');
    if (el) el.textContent = e.message;
  }
}
window.jobAction = jobAction;
