// The access token, if the server has one: from the address's fragment (#token=...,
// which browsers never send, so it stays out of server logs) or typed in; kept per tab.
const KEY = 'cxr_jax_token';
const QUEUE_POLL_MS = 1000;
function tokenFromAddress() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (!fragment.has('token')) return false;
  sessionStorage.setItem(KEY, fragment.get('token'));
  history.replaceState(null, '', location.pathname + location.search);
  return true;
}
tokenFromAddress();
window.addEventListener('hashchange', () => { if (tokenFromAddress()) loadModel(); });
function api(path, options = {}) {
  const token = sessionStorage.getItem(KEY);
  return fetch(path, {...options, headers: token ? {Authorization: 'Bearer ' + token} : {}});
}
// Every string from the server or a file name goes in as text, never as HTML.
function add(parent, tag, text, className) {
  const node = parent.appendChild(document.createElement(tag));
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}
async function reply(response) {  // The JSON body, or the raw text as its detail.
  const text = await response.text();
  try { return JSON.parse(text); } catch (e) { return {detail: text || response.statusText}; }
}
function problem(response, body) {
  if (response.status === 401) document.getElementById('auth').hidden = false;
  const detail = typeof body.detail === 'string' ? body.detail : JSON.stringify(body.detail);
  const status = document.getElementById('status');
  status.replaceChildren();
  add(status, 'p', `Error ${response.status}: ${detail}`, 'error');
}
async function loadModel() {
  const response = await api('api/model');
  const m = await reply(response);
  if (!response.ok) return problem(response, m);
  document.getElementById('auth').hidden = true;
  document.getElementById('status').replaceChildren();
  document.getElementById('model').textContent =
    `${m.name || m.model} (operating point ${m.operating_point}, ` +
    `threshold ${m.threshold.toFixed(3)})`;
}
document.getElementById('use-token').addEventListener('click', () => {
  sessionStorage.setItem(KEY, document.getElementById('token').value);
  loadModel();
});
function card(r) {
  const node = document.createElement('div');
  node.className = 'card';
  if (r.gradcam_png) {
    const img = add(node, 'img');
    img.alt = `Grad-CAM of ${r.file}`;
    img.src = `data:image/png;base64,${r.gradcam_png}`;
  }
  const text = add(node, 'div');
  add(text, 'b', r.file);
  if (r.error) {
    add(text, 'p', `Unreadable: ${r.error}`, 'error');
    return node;
  }
  add(text, 'p', r.label, r.label);
  add(text, 'p', `P(pneumonia) = ${r.probability.toFixed(3)} ` +
      `(threshold ${r.threshold.toFixed(3)})`);
  add(text, 'p', `Out-of-distribution score ${r.ood_score.toPrecision(3)}: ` + (r.in_distribution
      ? 'like the training images' : 'UNLIKE the training images' +
        (r.ood_signal ? ` (by its ${r.ood_signal})` : '') + ': no diagnosis'));
  if (r.adapted_label) {  // Beside the model's own answer, never in its place.
    add(text, 'p', `Adapted to these images (label-free): ${r.adapted_label}, ` +
        `P(pneumonia) = ${r.adapted_probability.toFixed(3)}`, 'adapted');
  }
  return node;
}
// While a request is out, the server's queue says whether it waits for a turn, and behind
// how many; the request names itself with a random ticket that only this tab knows.
function watchQueue(ticket, status) {
  let watching = true;
  const timer = setInterval(async () => {
    const response = await api(`api/queue?ticket=${ticket}`);
    if (!response.ok) return;
    const q = await response.json();
    if (!watching) return;  // The answer came meanwhile: it stays on the page.
    status.textContent = q.ahead === null ? 'Scoring...' :
      `Queued: ${q.ahead} request(s) ahead of this one and ${q.scoring} scoring; ` +
      `it waits at most ${q.max_wait_s} s.`;
  }, QUEUE_POLL_MS);
  return () => { watching = false; clearInterval(timer); };
}
document.getElementById('form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const data = new FormData();
  for (const f of document.getElementById('files').files) data.append('files', f);
  const status = document.getElementById('status'), out = document.getElementById('results');
  status.textContent = 'Scoring...';
  out.replaceChildren();
  const ticket = Array.from(crypto.getRandomValues(new Uint32Array(4)),
                            (n) => n.toString(16).padStart(8, '0')).join('');
  const stopWatching = watchQueue(ticket, status);
  let response, body;
  try {
    response = await api(`api/predict?ticket=${ticket}`, {method: 'POST', body: data});
    body = await reply(response);
  } finally {
    stopWatching();
  }
  if (!response.ok) return problem(response, body);
  status.textContent = `${body.results.length} file(s) scored.`;
  const folder = body.folder_test;  // Several files: the folder-level verdict, as text.
  if (folder) add(out, 'p', folder.summary, folder.shifted ? 'error' : '');
  const adapted = body.adaptation;  // Label-free adaptation to this request's images.
  if (adapted) add(out, 'p', adapted.method === 'none'
      ? `Label-free adaptation not applied: ${adapted.reason}.`
      : `Label-free adaptation applied (${adapted.method}; ${adapted.reason}): ` +
        'each adapted answer is shown beside the model\'s own.');
  for (const r of body.results) out.appendChild(card(r));
});
loadModel();
