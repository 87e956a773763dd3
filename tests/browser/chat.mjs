#!/usr/bin/env node
// Real-browser checks of resilient-qa's chat page (GET /) and one-tag widget (GET /widget.js),
// driven by playwright-core in Debian's /usr/bin/chromium (installed by
// scripts/install-browser.sh; no browser is ever downloaded). tests/api/browser.rs starts the
// service and the simulator, then runs one scenario:
//
//   node tests/browser/chat.mjs SCENARIO BASE_URL [--option value ...]
//
// It prints one JSON line of what it saw ({"scenario", "ok", ...}) and exits 0, or prints the
// same line with "ok": false and "error", the reason also on stderr, and exits 1. Every
// console error and uncaught page error fails a scenario (but for the few each scenario
// expects, e.g. the 503 of `overloaded`).
//
// Scenarios (the test contract: data-qa attributes inside <qa-chat>'s open shadow root,
// which Playwright's CSS locators pierce):
//   stream          the answer grows piece by piece (>= 3 intermediate texts), typing
//                   indicator before the first piece and gone after, final text == the
//                   `done` event's answer of the /ask response; page in Chinese (zh-CN)
//   whole           final text == --expected exactly (no text lost or repeated)
//   canned          data-source=canned, [data-qa=related] shows --related, degraded mark
//                   present and not red
//   overloaded      (with --hold QUESTION: this script keeps /ask busy with that question
//                   first) a 503 shows [data-qa=countdown] with a number, then the answer
//   widget          host page on 127.0.0.1:--host-port with hostile CSS embeds
//                   <script src=BASE/widget.js data-endpoint=BASE>; button, panel, streamed answer
//   widget-refused  same, the host's origin not allowed: [data-qa=unreachable] within 15 s
//   english         locale en-US: UI in English; --question answered with the English
//                   default reply (--expected, else "Sorry, ..."); the switch goes to Chinese
//   axe             axe-core on the page after one answer, light and dark: no serious or
//                   critical violation (all violations printed)
//   screenshots     --out DIR: chat-{desktop,phone}-{light,dark}.png after one answer
//
// Options: --question TEXT, --expected TEXT, --related TEXT, --hold QUESTION,
// --host-port PORT, --out DIR, --locale LOCALE, --timeout-ms N (whole run, default 60000).

import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
// Known to work on this machine: without the background-networking flags Chromium keeps
// trying to reach Google's hosts, which a closed network refuses. Playwright adds
// --headless and a fresh --user-data-dir (a temporary directory) itself; --no-sandbox is
// needed as root.
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

const SCENARIOS = {
  stream,
  whole,
  canned,
  overloaded,
  widget: (opts) => widgetScenario(opts, { allowed: true }),
  'widget-refused': (opts) => widgetScenario(opts, { allowed: false }),
  english,
  axe: axeScenario,
  screenshots,
};

// ------------------------------------------------------------------ command line

function usage(message) {
  process.stderr.write(
    `${message}\nusage: node chat.mjs SCENARIO BASE_URL [--question T] [--expected T] ` +
      `[--related T] [--hold Q] [--host-port P] [--out DIR] [--locale L] [--timeout-ms N]\n` +
      `scenarios: ${Object.keys(SCENARIOS).join(', ')}\n`,
  );
  process.exit(2);
}

function parseArgs(argv) {
  const [scenario, base, ...rest] = argv;
  if (!scenario || !SCENARIOS[scenario]) usage(`unknown scenario ${JSON.stringify(scenario)}`);
  if (!base || !/^https?:\/\//.test(base)) usage(`BASE_URL must be http(s)://..., got ${JSON.stringify(base)}`);
  const opts = { scenario, base: base.replace(/\/+$/, ''), timeoutMs: 60000 };
  const names = {
    '--question': 'question',
    '--expected': 'expected',
    '--related': 'related',
    '--hold': 'hold',
    '--host-port': 'hostPort',
    '--out': 'out',
    '--locale': 'locale',
    '--timeout-ms': 'timeoutMs',
  };
  for (let i = 0; i < rest.length; i += 2) {
    const key = names[rest[i]];
    if (!key) usage(`unknown option ${JSON.stringify(rest[i])}`);
    if (i + 1 >= rest.length) usage(`${rest[i]} needs a value`);
    opts[key] = rest[i + 1];
  }
  opts.timeoutMs = Number(opts.timeoutMs);
  if (opts.hostPort !== undefined) opts.hostPort = Number(opts.hostPort);
  return opts;
}

// ------------------------------------------------------------------ results and failure

const result = { scenario: null, ok: false };
const cleanups = [];

class Failure extends Error {}

function fail(message) {
  throw new Failure(message);
}

function check(condition, message) {
  if (!condition) fail(typeof message === 'function' ? message() : message);
}

async function finish(code) {
  for (const cleanup of cleanups.reverse()) {
    try {
      await cleanup();
    } catch {
      // best effort: the process ends anyway
    }
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(code);
}

// ------------------------------------------------------------------ browser and pages

async function launch() {
  let browser;
  try {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      timeout: 30000,
    });
  } catch (e) {
    fail(`could not start ${CHROMIUM} (run scripts/install-browser.sh): ${e.message}`);
  }
  cleanups.push(() => browser.close());
  result.browser = browser.version();
  return browser;
}

// In-page helpers, installed before the page's own scripts: finding data-qa elements
// through open shadow roots, and recording each change of the last answer (a
// MutationObserver on every shadow root, plus polling every 20 ms).
function pageHelpers() {
  const walkRoots = (node, out) => {
    out.push(node);
    if (node instanceof Element && node.shadowRoot) walkRoots(node.shadowRoot, out);
    for (const el of node.querySelectorAll('*')) if (el.shadowRoot) walkRoots(el.shadowRoot, out);
    return out;
  };
  const deepAll = (selector, node = document) => {
    const found = [];
    if (node instanceof Element && node.matches(selector)) found.push(node);
    for (const root of walkRoots(node, [])) found.push(...root.querySelectorAll(selector));
    return [...new Set(found)];
  };
  const shown = (el) =>
    !!el &&
    el.isConnected &&
    el.getClientRects().length > 0 &&
    getComputedStyle(el).visibility !== 'hidden' &&
    getComputedStyle(el).display !== 'none';
  const firstShown = (selector, node) => deepAll(selector, node).find(shown) || null;
  const describe = (answer) => {
    const textEl = deepAll('[data-qa=answer-text]', answer)[0] || null;
    const text = (el) => (el ? el.textContent : null);
    return {
      state: answer.getAttribute('data-state'),
      source: answer.getAttribute('data-source'),
      degraded: answer.getAttribute('data-degraded'),
      text: textEl ? textEl.textContent : '',
      innerText: textEl ? textEl.innerText : '',
      typing: !!firstShown('[data-qa=typing]', answer),
      degradedMark: !!firstShown('[data-qa=degraded-mark]', answer),
      related: text(firstShown('[data-qa=related]', answer)),
      countdown: text(firstShown('[data-qa=countdown]', answer)),
      unreachable: text(firstShown('[data-qa=unreachable]', answer)),
    };
  };
  const state = () => ({
    questions: deepAll('[data-qa=question]').map((q) => q.textContent),
    answers: deepAll('[data-qa=answer]').map(describe),
    // an error banner outside the answers counts too
    unreachable: deepAll('[data-qa=unreachable]').filter(shown).map((e) => e.textContent),
    countdown: deepAll('[data-qa=countdown]').filter(shown).map((e) => e.textContent),
  });
  const record = () => {
    const samples = [];
    let last = '';
    const sample = () => {
      const answers = deepAll('[data-qa=answer]');
      const a = answers[answers.length - 1];
      if (!a) return;
      const d = describe(a);
      const s = { n: answers.length, state: d.state, text: d.text, typing: d.typing, countdown: d.countdown };
      const key = JSON.stringify(s);
      if (key !== last) {
        last = key;
        samples.push({ t: Math.round(performance.now()), ...s });
      }
    };
    const observed = new WeakSet();
    const observer = new MutationObserver(sample);
    const observeAll = () => {
      for (const root of walkRoots(document, [])) {
        if (!observed.has(root)) {
          observed.add(root);
          observer.observe(root, { subtree: true, childList: true, characterData: true, attributes: true });
        }
      }
    };
    observeAll();
    const timer = setInterval(() => {
      observeAll();
      sample();
    }, 20);
    window.__qaRecording = { samples, stop: () => (clearInterval(timer), observer.disconnect(), samples) };
  };
  const colorOf = (selector, node = document) => {
    const el = firstShown(selector, node);
    if (!el) return null;
    const cs = getComputedStyle(el);
    return { color: cs.color, background: cs.backgroundColor, border: cs.borderTopColor, fontSize: cs.fontSize };
  };
  // The body of each /ask the page fetches, read from a clone of the response (a tee: the
  // page reads its own copy as it streams). DevTools' copy of a streamed body is not
  // reliable (sometimes gone, and decoded as windows-1252).
  const bodies = [];
  const pageFetch = window.fetch;
  window.fetch = function fetch(input, init) {
    const pending = pageFetch.apply(this, arguments);
    let url = null;
    try {
      url = new URL(typeof input === 'string' || input instanceof URL ? String(input) : input.url, location.href);
    } catch {
      url = null;
    }
    if (url && url.pathname.endsWith('/ask')) {
      const entry = { url: url.href, status: null, body: null, finished: false };
      bodies.push(entry);
      pending
        .then((response) => {
          entry.status = response.status;
          return response.clone().text();
        })
        .then(
          (text) => Object.assign(entry, { body: text, finished: true }),
          (err) => Object.assign(entry, { error: String(err), finished: true }),
        );
    }
    return pending;
  };
  window.__qa = { deepAll, shown, firstShown, state, record, colorOf, bodies };
}

async function newPage(browser, contextOptions = {}) {
  const context = await browser.newContext({ locale: 'zh-CN', ...contextOptions });
  cleanups.push(() => context.close());
  await context.addInitScript(pageHelpers);
  const page = await context.newPage();
  const watch = { consoleErrors: [], pageErrors: [], asks: [] };
  page.on('console', (msg) => {
    if (msg.type() === 'error') {
      const loc = msg.location();
      watch.consoleErrors.push(`${msg.text()}${loc && loc.url ? ` (${loc.url}:${loc.lineNumber})` : ''}`);
    }
  });
  page.on('pageerror', (err) => watch.pageErrors.push(String(err && err.stack ? err.stack : err)));
  page.on('response', (response) => {
    const request = response.request();
    if (request.method() !== 'POST' || !new URL(response.url()).pathname.endsWith('/ask')) {
      return;
    }
    const entry = {
      status: response.status(),
      accept: request.headers()['accept'] || null,
      contentType: response.headers()['content-type'] || null,
      retryAfter: response.headers()['retry-after'] || null,
    };
    watch.asks.push(entry);
  });
  page.on('requestfailed', (request) => {
    if (request.method() === 'POST' && new URL(request.url()).pathname.endsWith('/ask')) {
      watch.asks.push({ status: null, failure: request.failure() && request.failure().errorText });
    }
  });
  return { page, context, watch };
}

// Fails on console or page errors, but for those matching one of `allowed` (RegExps).
function checkErrors(watch, allowed = [], where = 'page') {
  const unexpected = watch.consoleErrors.filter((e) => !allowed.some((re) => re.test(e)));
  result.consoleErrors = (result.consoleErrors || []).concat(watch.consoleErrors);
  result.pageErrors = (result.pageErrors || []).concat(watch.pageErrors);
  check(watch.pageErrors.length === 0, () => `uncaught error in the ${where}: ${watch.pageErrors.join(' | ')}`);
  check(unexpected.length === 0, () => `console error in the ${where}: ${unexpected.join(' | ')}`);
}

const qaState = (page) => page.evaluate(() => window.__qa.state());

// Polls `probe` (async, returns a truthy value when done) every 50 ms up to `ms`.
async function waitFor(what, ms, probe) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await probe();
    if (last) return last;
    if (Date.now() > deadline) fail(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function openChat(page, url) {
  const response = await page.goto(url, { waitUntil: 'load', timeout: 20000 });
  check(response && response.ok(), () => `GET ${url} answered ${response ? response.status() : 'nothing'}`);
  await waitForChat(page);
}

async function waitForChat(page) {
  try {
    await page.locator('qa-chat [data-qa=input], [data-qa=input]').first().waitFor({ state: 'visible', timeout: 15000 });
  } catch {
    const defined = await page.evaluate(() => !!customElements.get('qa-chat'));
    fail(
      `the chat's [data-qa=input] never showed (customElements.get('qa-chat') is ${defined ? 'defined' : 'undefined'})`,
    );
  }
}

// Types `question` and sends it (Enter, or a click on [data-qa=send]); waits until it shows
// as the last [data-qa=question]. Starts recording the last answer's changes first.
async function ask(page, question, { via = 'enter' } = {}) {
  const before = await qaState(page);
  await page.evaluate(() => window.__qa.record());
  const input = page.locator('[data-qa=input]').first();
  await input.fill(question);
  if (via === 'enter') {
    await input.press('Enter');
  } else {
    await page.locator('[data-qa=send]').first().click();
  }
  await waitFor(`the question to show as [data-qa=question] #${before.questions.length + 1}`, 5000, async () => {
    const s = await qaState(page);
    return s.questions.length === before.questions.length + 1 ? s : null;
  });
  const after = await qaState(page);
  check(
    after.questions[after.questions.length - 1].includes(question),
    () => `the last [data-qa=question] reads ${JSON.stringify(after.questions.at(-1))}, not the question asked`,
  );
  const cleared = await input.inputValue();
  check(cleared === '', () => `the input still holds ${JSON.stringify(cleared)} after sending`);
  return before.answers.length;
}

// Waits until answer #index (0-based) reaches data-state done (or error, which fails unless
// `allowError`); returns its description.
async function waitForAnswer(page, index, { ms = 30000, allowError = false } = {}) {
  const answer = await waitFor(`[data-qa=answer] #${index + 1} to reach data-state=done`, ms, async () => {
    const s = await qaState(page);
    const a = s.answers[index];
    return a && (a.state === 'done' || a.state === 'error') ? a : null;
  });
  if (!allowError) {
    check(answer.state === 'done', () => `the answer ended in data-state=${answer.state}: ${JSON.stringify(answer)}`);
  }
  return answer;
}

async function stopRecording(page) {
  return page.evaluate(() => (window.__qaRecording ? window.__qaRecording.stop() : []));
}

// Server-sent events of a body: [{event, data}] with data parsed as JSON.
function parseSse(body) {
  const events = [];
  for (const block of body.replace(/\r\n?/g, '\n').split('\n\n')) {
    let event = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (line.startsWith('event:')) event = line.slice(6).trim();
      else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
    }
    if (data.length) {
      let parsed;
      try {
        parsed = JSON.parse(data.join('\n'));
      } catch {
        parsed = data.join('\n');
      }
      events.push({ event, data: parsed });
    }
  }
  return events;
}

// The `done` event of the last successful /ask, after checking how it was asked.
async function doneEvent(page, watch) {
  const ok = watch.asks.filter((a) => a.status === 200);
  check(ok.length > 0, () => `no /ask answered 200 (saw ${JSON.stringify(watch.asks.map((a) => a.status))})`);
  const ask = ok[ok.length - 1];
  check(
    (ask.accept || '').includes('text/event-stream'),
    () => `the page asked /ask with Accept: ${JSON.stringify(ask.accept)}, not text/event-stream`,
  );
  check(
    (ask.contentType || '').startsWith('text/event-stream'),
    () => `/ask answered Content-Type ${JSON.stringify(ask.contentType)}, not a stream`,
  );
  const entry = await waitFor('the body of the last /ask', 10000, () =>
    page.evaluate(() => {
      const done = window.__qa.bodies.filter((b) => b.status === 200);
      const last = done[done.length - 1];
      return last && last.finished ? last : null;
    }),
  );
  check(entry.body !== null, () => `could not read the /ask response body: ${entry.error}`);
  const events = parseSse(entry.body);
  const done = events.filter((e) => e.event === 'done');
  check(done.length === 1 && events.at(-1).event === 'done', () => `the stream does not end with one done: ${entry.body}`);
  const lastReset = events.map((e) => e.event).lastIndexOf('reset');
  const assembled = events
    .slice(lastReset + 1)
    .filter((e) => e.event === 'delta')
    .map((e) => e.data.text)
    .join('');
  check(assembled === done[0].data.answer, 'the deltas after the last reset differ from done.answer (server side)');
  return { done: done[0].data, events };
}

// The answer's text as shown: textContent, or innerText when the page renders line breaks
// as elements (both must be the whole answer, exactly).
function shownText(answer, expected) {
  return answer.text === expected || answer.innerText === expected ? expected : answer.text;
}

function checkDoneAttributes(answer, done) {
  check(answer.source === done.source, () => `data-source=${answer.source}, but the answer's source is ${done.source}`);
  check(
    answer.degraded === String(done.degraded),
    () => `data-degraded=${answer.degraded}, but the answer's degraded is ${done.degraded}`,
  );
  check(!answer.typing, 'the typing indicator still shows on a done answer');
}

function checkOneAnswerPerQuestion(state) {
  check(
    state.answers.length === state.questions.length,
    () => `${state.questions.length} [data-qa=question] but ${state.answers.length} [data-qa=answer]`,
  );
}

// Growth of the answer on screen: distinct texts before done, each a prefix of the final
// text (no reset in these scenarios), and whether the typing indicator came first.
function growth(samples, finalText) {
  const texts = [];
  for (const s of samples) if (s.text && !texts.includes(s.text)) texts.push(s.text);
  const intermediate = texts.filter((t) => t !== finalText);
  const firstText = samples.findIndex((s) => s.text);
  const typingBefore = samples.slice(0, firstText < 0 ? samples.length : firstText).some((s) => s.typing);
  const notPrefix = intermediate.filter((t) => !finalText.startsWith(t));
  return { texts, intermediate, typingBefore, notPrefix };
}

const CJK = /[\u3400-\u9fff]/;

async function pageLanguage(page) {
  return page.evaluate(() => {
    const chat = window.__qa.deepAll('qa-chat')[0];
    return {
      html: document.documentElement.lang || null,
      element: chat ? chat.getAttribute('lang') || chat.lang || null : null,
      title: (window.__qa.deepAll('[data-qa=title]')[0] || {}).textContent || null,
      placeholder: (window.__qa.deepAll('[data-qa=input]')[0] || {}).placeholder || null,
    };
  });
}

function isLang(lang, prefix) {
  return [lang.html, lang.element].some((l) => l && l.toLowerCase().startsWith(prefix));
}

// "Predominantly red": the red channel well above both others.
function isRed(css) {
  const m = /rgba?\(([\d.]+)[, ]+([\d.]+)[, ]+([\d.]+)(?:[,/ ]+([\d.]+))?/.exec(css || '');
  if (!m) return false;
  const [r, g, b] = [m[1], m[2], m[3]].map(Number);
  const alpha = m[4] === undefined ? 1 : Number(m[4]);
  return alpha > 0.1 && r >= 120 && r > 1.6 * g && r > 1.6 * b;
}

// ------------------------------------------------------------------ scenarios

// The usual walk: open the page, ask, wait for done, compare the screen with the stream.
async function askAndCompare(page, watch, question, opts = {}) {
  const index = await ask(page, question, opts);
  const answer = await waitForAnswer(page, index, opts);
  const samples = await stopRecording(page);
  const { done, events } = await doneEvent(page, watch);
  const shown = shownText(answer, done.answer);
  check(
    shown === done.answer,
    () => `the text on screen differs from done.answer:\n  screen: ${JSON.stringify(answer.text)}\n  done:   ${JSON.stringify(done.answer)}`,
  );
  checkDoneAttributes(answer, done);
  checkOneAnswerPerQuestion(await qaState(page));
  return { answer, samples, done, events };
}

async function stream(opts) {
  const browser = await launch();
  const { page, watch } = await newPage(browser, { locale: opts.locale || 'zh-CN' });
  await openChat(page, `${opts.base}/`);
  checkErrors(watch, [], 'page after loading');

  const lang = await pageLanguage(page);
  result.language = lang;
  check(isLang(lang, 'zh'), () => `with locale zh-CN the page's language is ${JSON.stringify(lang)}, not zh`);
  check(CJK.test(lang.title || ''), () => `with locale zh-CN the title ${JSON.stringify(lang.title)} is not Chinese`);

  const parts = await page.evaluate(() => ({
    suggestions: window.__qa.deepAll('[data-qa=suggestion]').filter(window.__qa.shown).length,
    messages: window.__qa.deepAll('[data-qa=messages]').filter(window.__qa.shown).length,
    send: window.__qa.deepAll('[data-qa=send]').filter(window.__qa.shown).length,
    langSwitch: window.__qa.deepAll('[data-qa=lang-switch]').filter(window.__qa.shown).length,
  }));
  result.parts = parts;
  for (const [name, count] of Object.entries(parts)) {
    check(count > 0, () => `no visible [data-qa=${name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}] before the first question`);
  }

  const question = opts.question || '请问订单多久能送到?';
  const { answer, samples, done, events } = await askAndCompare(page, watch, question);
  const inMessages = await page.evaluate(() => {
    const box = window.__qa.deepAll('[data-qa=messages]')[0];
    return {
      questions: window.__qa.deepAll('[data-qa=question]', box).length,
      answers: window.__qa.deepAll('[data-qa=answer]', box).length,
    };
  });
  check(
    inMessages.questions === 1 && inMessages.answers === 1,
    () => `[data-qa=messages] does not hold the question and its answer: ${JSON.stringify(inMessages)}`,
  );
  const g = growth(samples, done.answer);
  result.deltas = events.filter((e) => e.event === 'delta').length;
  result.intermediateTexts = g.intermediate.length;
  result.samples = samples.length;
  result.source = answer.source;
  result.answer = done.answer;
  check(g.typingBefore, () => `the typing indicator never showed before the first piece: ${JSON.stringify(samples.slice(0, 5))}`);
  check(
    g.intermediate.length >= 3,
    () => `the answer did not grow piece by piece: ${g.intermediate.length} intermediate texts ` +
      `(${result.deltas} deltas on the wire): ${JSON.stringify(g.intermediate)}`,
  );
  check(g.notPrefix.length === 0, () => `texts shown mid-way that the final answer does not begin with: ${JSON.stringify(g.notPrefix)}`);
  checkErrors(watch);
}

async function whole(opts) {
  check(opts.expected !== undefined, 'whole needs --expected TEXT');
  const browser = await launch();
  const { page, watch } = await newPage(browser, { locale: opts.locale || 'zh-CN' });
  await openChat(page, `${opts.base}/`);
  const question = opts.question || '退货要多久才能退款?';
  const { answer, samples, done, events } = await askAndCompare(page, watch, question);
  result.resets = events.filter((e) => e.event === 'reset').length;
  result.source = answer.source;
  result.continued = done.continued === true;
  result.answer = done.answer;
  result.shownTexts = growth(samples, done.answer).texts.length;
  check(
    shownText(answer, opts.expected) === opts.expected,
    () => `the text on screen is not the expected answer:\n  screen:   ${JSON.stringify(answer.text)}\n  expected: ${JSON.stringify(opts.expected)}`,
  );
  checkErrors(watch);
}

async function canned(opts) {
  check(opts.question && opts.related, 'canned needs --question TEXT and --related TEXT');
  const browser = await launch();
  const { page, watch } = await newPage(browser, { locale: opts.locale || 'zh-CN' });
  await openChat(page, `${opts.base}/`);
  const { answer, done } = await askAndCompare(page, watch, opts.question);
  result.answer = done.answer;
  result.related = answer.related;
  check(answer.source === 'canned', () => `data-source=${answer.source}, not canned`);
  check(answer.degraded === 'true', () => `data-degraded=${answer.degraded} on a canned answer`);
  if (opts.expected !== undefined) {
    check(done.answer === opts.expected, () => `canned answer ${JSON.stringify(done.answer)}, not ${JSON.stringify(opts.expected)}`);
  }
  check(answer.related !== null, 'no [data-qa=related] shows on a canned answer');
  check(
    answer.related.includes(opts.related),
    () => `[data-qa=related] reads ${JSON.stringify(answer.related)}, without the matched question ${JSON.stringify(opts.related)}`,
  );
  check(answer.degradedMark, 'no [data-qa=degraded-mark] shows on a canned (fallback) answer');
  const colors = await page.evaluate(() => {
    const answers = window.__qa.deepAll('[data-qa=answer]');
    return window.__qa.colorOf('[data-qa=degraded-mark]', answers[answers.length - 1]);
  });
  result.degradedMarkColors = colors;
  for (const [what, css] of Object.entries({ color: colors.color, background: colors.background })) {
    check(!isRed(css), () => `the degraded mark is styled red (${what} ${css}): a fallback answer is not an error`);
  }
  checkErrors(watch);
}

async function overloaded(opts) {
  const browser = await launch();
  const { page, watch } = await newPage(browser, { locale: opts.locale || 'zh-CN' });
  await openChat(page, `${opts.base}/`);

  let hold = null;
  if (opts.hold) {
    // Keep /ask busy (the caller set limits.max_concurrent_requests=1 and a slow model).
    const startHold = () => {
      const held = { settled: false };
      held.promise = fetch(`${opts.base}/ask`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ question: opts.hold }),
      })
        .then(
          async (r) => ({ status: r.status, body: await r.text() }),
          (e) => ({ status: null, body: String(e) }),
        )
        .then((r) => Object.assign(held, r, { settled: true }));
      return held;
    };
    hold = startHold();
    await new Promise((r) => setTimeout(r, 200));
    // Ask only once the slot is taken. The probe is an empty question: 422 while the slot
    // is free (load shedding comes before the checks of the question, and an invalid
    // question never reaches the models nor takes the slot for long), 503 once it is taken.
    await waitFor('/ask to answer 503 while the held question is in flight', 5000, async () => {
      if (hold.settled && hold.status === 503) hold = startHold(); // a probe took the slot first
      const probe = await fetch(`${opts.base}/ask`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ question: '' }),
      });
      await probe.arrayBuffer();
      return probe.status === 503;
    });
  }
  const question = opts.question || '现在人多吗?';
  const index = await ask(page, question);
  const countdown = await waitFor('[data-qa=countdown] with a number', 10000, async () => {
    const s = await qaState(page);
    const a = s.answers[index];
    const text = (a && a.countdown) || s.countdown[0] || null;
    if (a && a.state === 'done') fail(`the answer came with no countdown shown (503s seen: ${watch.asks.filter((x) => x.status === 503).length})`);
    return text && /\d/.test(text) ? text : null;
  });
  result.countdown = countdown;
  const answer = await waitForAnswer(page, index, { ms: 30000 });
  await stopRecording(page);
  const statuses = watch.asks.map((a) => a.status);
  result.askStatuses = statuses;
  result.retryAfter = watch.asks.filter((a) => a.status === 503).map((a) => a.retryAfter);
  check(statuses.includes(503), () => `no /ask answered 503: ${JSON.stringify(statuses)}`);
  check(statuses.at(-1) === 200, () => `the last /ask answered ${statuses.at(-1)}`);
  const { done } = await doneEvent(page, watch);
  check(shownText(answer, done.answer) === done.answer, 'the text on screen differs from done.answer');
  checkDoneAttributes(answer, done);
  const after = await qaState(page);
  check(after.countdown.length === 0 && !after.answers[index].countdown, 'the countdown still shows after the answer');
  checkOneAnswerPerQuestion(after);
  if (hold) {
    const held = await hold.promise;
    result.hold = held.status;
    check(held.status === 200, () => `the request that held /ask answered ${held.status}: ${held.body}`);
  }
  // Chromium logs each non-2xx fetch as "Failed to load resource: ... 503".
  checkErrors(watch, [/status of 503/]);
}

// A host page from another origin that embeds the widget with one tag, under hostile CSS.
function hostPage(base) {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>A shop that embeds the chat</title>
<style>
  /* Hostile global CSS: none of it may reach the widget's inside. */
  * { color: red !important; font-size: 40px; font-family: "Comic Sans MS", cursive !important; }
  div, section, button, textarea { margin: 17px; padding: 23px; border: 5px dashed lime; background: yellow; }
  button { text-transform: uppercase; letter-spacing: 9px; }
  textarea { display: none; }
  [hidden] { display: block !important; }
</style>
</head>
<body>
<h1>Welcome to the shop</h1>
<p>Products, prices and the rest of a page the widget must not disturb.</p>
<script src="${base}/widget.js" data-endpoint="${base}" async></script>
</body>
</html>
`;
}

async function serveHost(base, port) {
  const html = hostPage(base);
  const server = createServer((req, res) => {
    if (req.url === '/' || req.url.startsWith('/?')) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(html);
    } else if (req.url === '/favicon.ico') {
      res.writeHead(204);
      res.end();
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found');
    }
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  cleanups.push(() => new Promise((r) => server.close(r)));
  return `http://127.0.0.1:${server.address().port}`;
}

async function widgetScenario(opts, { allowed }) {
  const origin = await serveHost(opts.base, opts.hostPort || 0);
  result.hostOrigin = origin;
  const browser = await launch();
  const { page, watch } = await newPage(browser, { locale: opts.locale || 'zh-CN' });
  const response = await page.goto(`${origin}/`, { waitUntil: 'load', timeout: 20000 });
  check(response && response.ok(), 'the host page did not load');

  const button = page.locator('[data-qa=widget-button]').first();
  try {
    await button.waitFor({ state: 'visible', timeout: 15000 });
  } catch {
    fail(`no [data-qa=widget-button] showed on the host page (script ${opts.base}/widget.js)`);
  }
  // The button is a floating one: in a corner of the viewport, on top.
  const box = await button.boundingBox();
  const viewport = page.viewportSize();
  result.buttonBox = box;
  check(
    box && box.x + box.width > viewport.width / 2 && box.y + box.height > viewport.height / 2,
    () => `the widget button is not in the bottom-right part of the viewport: ${JSON.stringify(box)}`,
  );
  await button.click();
  const panel = page.locator('[data-qa=widget-panel]').first();
  try {
    await panel.waitFor({ state: 'visible', timeout: 5000 });
  } catch {
    fail('a click on [data-qa=widget-button] did not open a visible [data-qa=widget-panel]');
  }
  const chatInPanel = await page.evaluate(() => {
    const p = window.__qa.deepAll('[data-qa=widget-panel]')[0];
    return window.__qa.deepAll('qa-chat', p).length;
  });
  check(chatInPanel > 0, 'the [data-qa=widget-panel] holds no <qa-chat>');
  await waitForChat(page);

  // The host's hostile CSS stays outside.
  const look = await page.evaluate(() => ({
    button: window.__qa.colorOf('[data-qa=widget-button]'),
    input: window.__qa.colorOf('[data-qa=input]'),
    title: window.__qa.colorOf('[data-qa=title]'),
  }));
  result.widgetLook = look;
  for (const [what, css] of Object.entries(look)) {
    if (!css) continue;
    check(!isRed(css.color), () => `the host page's CSS leaks into the widget: ${what} color ${css.color}`);
    check(parseFloat(css.fontSize) < 40, () => `the host page's CSS leaks into the widget: ${what} font-size ${css.fontSize}`);
  }

  const question = opts.question || (allowed ? '你们的客服几点上班?' : '有人在吗?');
  if (allowed) {
    const { answer, samples, done } = await askAndCompare(page, watch, question, { via: 'send' });
    const g = growth(samples, done.answer);
    result.intermediateTexts = g.intermediate.length;
    result.source = answer.source;
    result.answer = done.answer;
    check(g.intermediate.length >= 3, () => `the widget's answer did not stream: ${JSON.stringify(g.intermediate)}`);
    check(g.notPrefix.length === 0, () => `texts shown mid-way that the answer does not begin with: ${JSON.stringify(g.notPrefix)}`);
    const text = await page.evaluate(() => {
      const answers = window.__qa.deepAll('[data-qa=answer]');
      return window.__qa.colorOf('[data-qa=answer-text]', answers[answers.length - 1]);
    });
    check(text && !isRed(text.color) && parseFloat(text.fontSize) < 40, () => `the host page's CSS leaks into the answer: ${JSON.stringify(text)}`);
    checkErrors(watch);
  } else {
    const started = Date.now();
    const index = await ask(page, question, { via: 'send' });
    const shown = await waitFor('[data-qa=unreachable] (the origin is not allowed)', 15000, async () => {
      const s = await qaState(page);
      const a = s.answers[index];
      if (a && a.state === 'done') fail(`an answer came although the origin ${origin} is not allowed: ${JSON.stringify(a)}`);
      return (a && a.unreachable) || s.unreachable[0] || null;
    });
    await stopRecording(page);
    result.unreachable = shown;
    result.unreachableAfterMs = Date.now() - started;
    result.askStatuses = watch.asks.map((a) => a.status ?? a.failure);
    const s = await qaState(page);
    result.answerState = s.answers[index] ? s.answers[index].state : null;
    check(!s.answers[index] || !s.answers[index].typing, 'the typing indicator still shows beside [data-qa=unreachable]');
    // The browser reports each refused cross-origin request on the console.
    checkErrors(watch, [/CORS|Access-Control|ERR_FAILED|Failed to fetch|net::|Failed to load resource/i]);
  }
}

async function english(opts) {
  const browser = await launch();
  const { page, watch } = await newPage(browser, { locale: 'en-US' });
  await openChat(page, `${opts.base}/`);
  const lang = await pageLanguage(page);
  result.language = lang;
  check(isLang(lang, 'en'), () => `with locale en-US the page's language is ${JSON.stringify(lang)}, not en`);
  check(lang.title && !CJK.test(lang.title), () => `with locale en-US the title is ${JSON.stringify(lang.title)}`);
  check(!CJK.test(lang.placeholder || ''), () => `with locale en-US the input's placeholder is ${JSON.stringify(lang.placeholder)}`);

  const question = opts.question || 'Can your robots paint my garage purple on Sunday?';
  const { answer, done } = await askAndCompare(page, watch, question);
  result.source = answer.source;
  result.answer = done.answer;
  if (opts.expected !== undefined) {
    check(done.answer === opts.expected, () => `the reply is ${JSON.stringify(done.answer)}, not ${JSON.stringify(opts.expected)}`);
  } else {
    check(/^Sorry\b/.test(done.answer), () => `the reply ${JSON.stringify(done.answer)} is not the English default reply`);
  }

  // The switch turns the UI to Chinese.
  const langSwitch = page.locator('[data-qa=lang-switch]').first();
  check((await langSwitch.count()) > 0, 'no [data-qa=lang-switch]');
  await langSwitch.click();
  const switched = await waitFor('the UI to turn Chinese after [data-qa=lang-switch]', 3000, async () => {
    const l = await pageLanguage(page);
    return isLang(l, 'zh') && CJK.test(l.title || '') ? l : null;
  });
  result.switchedLanguage = switched;
  checkErrors(watch);
}

async function axeScenario(opts) {
  const browser = await launch();
  const axePath = require.resolve('axe-core/axe.min.js');
  result.axe = {};
  const serious = [];
  for (const colorScheme of ['light', 'dark']) {
    // The page's Content-Security-Policy (script-src 'self') refuses the injected axe
    // script: bypassed here only, the other scenarios run under it.
    const { page, watch } = await newPage(browser, { locale: opts.locale || 'zh-CN', colorScheme, bypassCSP: true });
    await openChat(page, `${opts.base}/`);
    await askAndCompare(page, watch, opts.question || '发票怎么开?');
    await page.addScriptTag({ path: axePath });
    const violations = await page.evaluate(async () => {
      // axe walks open shadow roots itself.
      const r = await window.axe.run(document, { resultTypes: ['violations'] });
      return r.violations.map((v) => ({
        id: v.id,
        impact: v.impact,
        help: v.help,
        nodes: v.nodes.slice(0, 5).map((n) => ({ target: n.target, summary: n.failureSummary })),
        count: v.nodes.length,
      }));
    });
    result.axe[colorScheme] = violations;
    for (const v of violations) {
      process.stderr.write(`axe ${colorScheme}: ${v.impact} ${v.id} (${v.count}): ${v.help} ${JSON.stringify(v.nodes.map((n) => n.target))}\n`);
      if (v.impact === 'serious' || v.impact === 'critical') serious.push(`${colorScheme}: ${v.impact} ${v.id} (${v.help}) at ${JSON.stringify(v.nodes.map((n) => n.target))}`);
    }
    checkErrors(watch);
  }
  result.axeVersion = require('axe-core/package.json').version;
  check(serious.length === 0, () => `axe found serious or critical violations: ${serious.join('; ')}`);
}

async function screenshots(opts) {
  check(opts.out, 'screenshots needs --out DIR');
  mkdirSync(opts.out, { recursive: true });
  const browser = await launch();
  const devices = {
    desktop: { viewport: { width: 1280, height: 800 }, deviceScaleFactor: 1 },
    phone: { viewport: { width: 375, height: 740 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true },
  };
  result.files = [];
  for (const [device, options] of Object.entries(devices)) {
    for (const colorScheme of ['light', 'dark']) {
      const { page, watch } = await newPage(browser, { locale: opts.locale || 'zh-CN', colorScheme, ...options });
      await openChat(page, `${opts.base}/`);
      await askAndCompare(page, watch, opts.question || '请问订单多久能送到?');
      const overflow = await page.evaluate(() => document.scrollingElement.scrollWidth - window.innerWidth);
      check(overflow <= 1, () => `${device}: the page is ${overflow}px wider than the viewport (horizontal scrolling)`);
      const file = join(opts.out, `chat-${device}-${colorScheme}.png`);
      await page.waitForTimeout(300); // let transitions settle
      await page.screenshot({ path: file, animations: 'disabled', caret: 'hide' });
      result.files.push(file);
      checkErrors(watch);
    }
  }
}

// ------------------------------------------------------------------ main

const opts = parseArgs(process.argv.slice(2));
result.scenario = opts.scenario;
result.base = opts.base;
const timer = setTimeout(() => {
  result.error = `scenario ${opts.scenario} did not finish within ${opts.timeoutMs} ms`;
  process.stderr.write(`FAIL ${opts.scenario}: ${result.error}\n`);
  finish(1);
}, opts.timeoutMs);

try {
  await SCENARIOS[opts.scenario](opts);
  result.ok = true;
  clearTimeout(timer);
  await finish(0);
} catch (e) {
  clearTimeout(timer);
  result.ok = false;
  result.error = e instanceof Failure ? e.message : `${e.name}: ${e.message}`;
  if (!(e instanceof Failure)) result.stack = e.stack;
  process.stderr.write(`FAIL ${opts.scenario}: ${result.error}\n`);
  await finish(1);
}
