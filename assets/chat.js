/* resilient-qa customer chat: the <qa-chat> custom element.
 *
 * Plain ES2020, no dependencies, nothing loaded from anywhere else. All markup and CSS
 * live in the element's open shadow root, so a host page's CSS cannot reach them.
 *
 * Config: window.QA_CHAT_CONFIG if set, else the JSON in
 * <script id="qa-chat-config" type="application/json">, else the defaults below:
 *   {"title": {"zh", "en"}, "greeting": {"zh", "en"}, "suggestions": {"zh": [], "en": []},
 *    "endpoint": ""}
 * Attributes: endpoint (base URL of the service, overrides the config's; "" = same
 * origin), data-lang ("zh" | "en"), data-title, data-mode ("page" | "embedded"),
 * closable (shows a close button that fires "qa-chat-close").
 *
 * Transport: POST {endpoint}/ask, answered as server-sent events (delta, reset, done),
 * read with fetch() and a stream reader; see Attempt below.
 */
(() => {
  'use strict';

  if (typeof window === 'undefined' || !window.customElements || customElements.get('qa-chat')) {
    return;
  }

  const MAX_CHARS = 2000;
  const ATTEMPT_TIMEOUT_MS = 60000;
  const MAX_BUSY_RETRIES = 5;
  const NETWORK_BACKOFF_MS = [1000, 2000, 4000];
  const RETRY_AFTER_DEFAULT_S = 1;
  const RETRY_AFTER_CAP_S = 30;
  const COUNTER_FROM = 1800;
  const STORAGE_KEY = 'qa-chat-lang';
  const LANGS = ['zh', 'en'];

  // Every UI string, in both languages (the widget's too).
  const STRINGS = {
    zh: {
      langSwitch: 'English',
      langSwitchLabel: 'Switch to English',
      langSwitchLang: 'en',
      close: '关闭',
      messages: '对话记录',
      speakerBot: '客服:',
      speakerUser: '我:',
      suggestions: '常见问题',
      inputLabel: '您的问题',
      placeholder: '输入您的问题…',
      send: '发送',
      typing: '正在输入…',
      degraded: '自动回复',
      degradedTip: '客服系统暂时繁忙,这是一条自动回复,内容可能不够精确。',
      related: '相关问题:',
      busy: (n) => `服务繁忙,${n} 秒后重试…`,
      busyGaveUp: '服务繁忙,请稍后再试。',
      reconnecting: '重新连接…',
      unreachable: '无法连接到客服服务,请稍后再试。',
      retry: '重试',
      httpError: (n) => `请求失败(HTTP ${n}),请稍后再试。`,
      counter: (n) => `${n}/${MAX_CHARS}`,
      widgetButton: '在线客服',
      widgetRegion: '在线客服',
      defaultTitle: '在线客服',
      defaultGreeting: '您好!我是在线客服,请问有什么可以帮您?',
      defaultSuggestions: ['如何退货?', '多久发货?', '退款多久到账?'],
    },
    en: {
      langSwitch: '中文',
      langSwitchLabel: '切换到中文',
      langSwitchLang: 'zh',
      close: 'Close',
      messages: 'Conversation',
      speakerBot: 'Assistant:',
      speakerUser: 'You:',
      suggestions: 'Suggested questions',
      inputLabel: 'Your question',
      placeholder: 'Type your question…',
      send: 'Send',
      typing: 'Typing…',
      degraded: 'Automated reply',
      degradedTip: 'Our assistant is busy right now, so this is an automated reply and may be less precise.',
      related: 'Related question:',
      busy: (n) => `Busy, retrying in ${n} s…`,
      busyGaveUp: 'The service is busy. Please try again later.',
      reconnecting: 'Reconnecting…',
      unreachable: 'The service is unreachable. Please try again later.',
      retry: 'Retry',
      httpError: (n) => `The request failed (HTTP ${n}). Please try again later.`,
      counter: (n) => `${n}/${MAX_CHARS}`,
      widgetButton: 'Chat with customer service',
      widgetRegion: 'Customer service chat',
      defaultTitle: 'Customer Service',
      defaultGreeting: 'Hello! I am the customer service assistant. How can I help you?',
      defaultSuggestions: ['How do I return an item?', 'How soon do you ship?', 'How long does a refund take?'],
    },
  };

  function t(lang, key, n) {
    const table = STRINGS[lang] || STRINGS.en;
    const v = key in table ? table[key] : STRINGS.en[key];
    return typeof v === 'function' ? v(n) : v;
  }

  function otherLang(lang) {
    return lang === 'zh' ? 'en' : 'zh';
  }

  function normLang(v) {
    if (typeof v !== 'string') return null;
    const s = v.trim().toLowerCase();
    if (s.startsWith('zh')) return 'zh';
    if (s.startsWith('en')) return 'en';
    return null;
  }

  function storedLang() {
    try {
      return normLang(window.localStorage.getItem(STORAGE_KEY));
    } catch (_) {
      return null;
    }
  }

  function storeLang(lang) {
    try {
      window.localStorage.setItem(STORAGE_KEY, lang);
    } catch (_) {
      /* storage may be disabled or full: the choice just isn't remembered */
    }
  }

  function browserLang() {
    let list = [];
    try {
      list = Array.from(navigator.languages || []);
      if (navigator.language) list.push(navigator.language);
    } catch (_) {
      list = [];
    }
    for (const l of list) {
      const n = normLang(l);
      if (n) return n;
    }
    return 'en';
  }

  // ---- config ---------------------------------------------------------------------

  function readRawConfig() {
    try {
      const c = window.QA_CHAT_CONFIG;
      if (c && typeof c === 'object') return c;
    } catch (_) {
      /* ignore */
    }
    try {
      const el = document.getElementById('qa-chat-config');
      if (el) {
        const text = (el.textContent || '').trim();
        if (text) {
          const c = JSON.parse(text);
          if (c && typeof c === 'object') return c;
        }
      }
    } catch (_) {
      /* an unfilled or broken config: the defaults apply */
    }
    return {};
  }

  function nonEmpty(s) {
    return typeof s === 'string' && s.trim() !== '' ? s : null;
  }

  function localized(v, key) {
    if (nonEmpty(v)) return { zh: v, en: v };
    const o = v && typeof v === 'object' ? v : {};
    const zh = nonEmpty(o.zh);
    const en = nonEmpty(o.en);
    return {
      zh: zh || en || t('zh', key),
      en: en || zh || t('en', key),
    };
  }

  function stringList(v) {
    return Array.isArray(v)
      ? v.filter((s) => nonEmpty(s)).map((s) => s.trim().slice(0, MAX_CHARS))
      : null;
  }

  function loadConfig() {
    const raw = readRawConfig();
    let suggestions;
    if (raw.suggestions === undefined || raw.suggestions === null) {
      suggestions = { zh: t('zh', 'defaultSuggestions'), en: t('en', 'defaultSuggestions') };
    } else if (Array.isArray(raw.suggestions)) {
      const list = stringList(raw.suggestions);
      suggestions = { zh: list, en: list };
    } else {
      const o = typeof raw.suggestions === 'object' ? raw.suggestions : {};
      suggestions = { zh: stringList(o.zh) || [], en: stringList(o.en) || [] };
    }
    return {
      title: localized(raw.title, 'defaultTitle'),
      greeting: localized(raw.greeting, 'defaultGreeting'),
      suggestions,
      endpoint: typeof raw.endpoint === 'string' ? raw.endpoint : '',
      lang: normLang(raw.lang),
    };
  }

  // ---- small helpers ----------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === null || v === undefined || v === false) continue;
        if (k === 'class') el.className = v;
        else el.setAttribute(k, v === true ? '' : String(v));
      }
    }
    for (const c of children) {
      if (c !== null && c !== undefined) el.append(c);
    }
    return el;
  }

  const SVG_NS = 'http://www.w3.org/2000/svg';

  function icon(paths) {
    const svg = document.createElementNS(SVG_NS, 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('width', '20');
    svg.setAttribute('height', '20');
    svg.setAttribute('aria-hidden', 'true');
    svg.setAttribute('focusable', 'false');
    for (const d of paths) {
      const p = document.createElementNS(SVG_NS, 'path');
      p.setAttribute('d', d);
      p.setAttribute('fill', 'none');
      p.setAttribute('stroke', 'currentColor');
      p.setAttribute('stroke-width', '2');
      p.setAttribute('stroke-linecap', 'round');
      svg.append(p);
    }
    return svg;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function retryAfterSeconds(value) {
    let s = NaN;
    if (typeof value === 'string' && value.trim() !== '') {
      const v = value.trim();
      if (/^\d+$/.test(v)) {
        s = parseInt(v, 10);
      } else {
        const when = Date.parse(v);
        if (!Number.isNaN(when)) s = Math.ceil((when - Date.now()) / 1000);
      }
    }
    if (!Number.isFinite(s) || s < 1) s = RETRY_AFTER_DEFAULT_S;
    return Math.min(s, RETRY_AFTER_CAP_S);
  }

  /* A server-sent events parser (the WHATWG rules that matter here): lines end in
   * CRLF, LF or CR; a blank line ends an event; lines starting with ':' are comments;
   * "field: value" with one optional space after the colon; several data lines are
   * joined with "\n". Calls onEvent(type, data) for each event with data. */
  function sseParser(onEvent) {
    let buf = '';
    let type = '';
    let data = [];
    let hasData = false;

    function line(l) {
      if (l === '') {
        if (hasData) onEvent(type || 'message', data.join('\n'));
        type = '';
        data = [];
        hasData = false;
        return;
      }
      if (l[0] === ':') return;
      const i = l.indexOf(':');
      let field = l;
      let value = '';
      if (i !== -1) {
        field = l.slice(0, i);
        value = l.slice(i + 1);
        if (value[0] === ' ') value = value.slice(1);
      }
      if (field === 'event') type = value;
      else if (field === 'data') {
        data.push(value);
        hasData = true;
      }
    }

    return {
      push(text) {
        buf += text;
        const re = /\r\n|\r|\n/g;
        let start = 0;
        let m;
        while ((m = re.exec(buf)) !== null) {
          // A CR at the very end may be the first half of a CRLF: wait for more.
          if (m[0] === '\r' && m.index === buf.length - 1) break;
          line(buf.slice(start, m.index));
          start = m.index + m[0].length;
        }
        buf = buf.slice(start);
      },
      end() {
        if (buf !== '') line(buf.replace(/\r$/, ''));
        buf = '';
        line('');
      },
    };
  }

  // ---- styles -----------------------------------------------------------------------

  const CSS = `
:host { all: initial; display: block; height: 100%; }
:host([hidden]) { display: none; }
*, *::before, *::after { box-sizing: border-box; }
[hidden] { display: none !important; }

.app {
  --qa-page: #eef0f3;
  --qa-bg: #ffffff;
  --qa-text: #1b1f24;
  --qa-muted: #57606a;
  --qa-border: #d0d7de;
  --qa-field-border: #7d8590;
  --qa-bot-bg: #eef1f4;
  --qa-bot-text: #1b1f24;
  --qa-user-bg: #1d4ed8;
  --qa-user-text: #ffffff;
  --qa-accent: #1d4ed8;
  --qa-on-accent: #ffffff;
  --qa-chip-text: #1d4ed8;
  --qa-chip-border: #9fb3c8;
  --qa-hover: #e6ecf7;
  --qa-focus: #1d4ed8;
  --qa-notice: #9a6700;
  color-scheme: light;
  display: flex;
  justify-content: center;
  height: 100%;
  min-height: 0;
  background: var(--qa-page);
  color: var(--qa-text);
  font-family: system-ui, -apple-system, "Segoe UI", "PingFang SC", "Hiragino Sans GB",
    "Microsoft YaHei", "Noto Sans CJK SC", "Noto Sans SC", Roboto, "Helvetica Neue", Arial, sans-serif;
  font-size: 15px;
  line-height: 1.55;
  font-style: normal;
  font-weight: 400;
  letter-spacing: normal;
  word-spacing: normal;
  text-align: start;
  text-indent: 0;
  text-transform: none;
  text-shadow: none;
  white-space: normal;
  visibility: visible;
  cursor: auto;
  -webkit-text-size-adjust: 100%;
  text-size-adjust: 100%;
}
@media (prefers-color-scheme: dark) {
  .app {
    --qa-page: #0b0d10;
    --qa-bg: #15181c;
    --qa-text: #e8eaed;
    --qa-muted: #a9b1bb;
    --qa-border: #343a42;
    --qa-field-border: #7a828d;
    --qa-bot-bg: #23272e;
    --qa-bot-text: #e8eaed;
    --qa-user-bg: #1d4ed8;
    --qa-user-text: #ffffff;
    --qa-accent: #8ab4ff;
    --qa-on-accent: #0b1630;
    --qa-chip-text: #a8c7ff;
    --qa-chip-border: #4a5563;
    --qa-hover: #1f2a3d;
    --qa-focus: #8ab4ff;
    --qa-notice: #d29922;
    color-scheme: dark;
  }
}
.app[data-mode="embedded"] { background: var(--qa-bg); }

.column {
  display: flex;
  flex-direction: column;
  width: 100%;
  max-width: 760px;
  height: 100%;
  min-height: 0;
  background: var(--qa-bg);
}
.app[data-mode="page"] .column { border-inline: 1px solid var(--qa-border); }
.app[data-mode="embedded"] .column { max-width: none; }
@media (max-width: 760px) {
  .app[data-mode="page"] .column { border-inline: 0; }
}

.header {
  flex: none;
  display: flex;
  align-items: center;
  gap: 8px;
  min-height: 56px;
  padding: 8px 12px 8px 16px;
  border-bottom: 1px solid var(--qa-border);
}
.title {
  flex: 1;
  min-width: 0;
  margin: 0;
  font-size: 17px;
  font-weight: 600;
  line-height: 1.3;
  overflow: hidden;
  text-overflow: ellipsis;
  white-space: nowrap;
}
.actions { flex: none; display: flex; align-items: center; gap: 4px; }

button { font: inherit; color: inherit; margin: 0; }
.btn {
  display: inline-flex;
  align-items: center;
  justify-content: center;
  min-height: 36px;
  padding: 6px 12px;
  border: 1px solid var(--qa-field-border);
  border-radius: 999px;
  background: transparent;
  color: var(--qa-text);
  font-size: 14px;
  line-height: 1.2;
  cursor: pointer;
}
.btn:hover { background: var(--qa-hover); }
.btn:disabled { cursor: not-allowed; opacity: 0.6; }
.icon-btn {
  display: inline-flex;
  align-items: center;
  justify-content: center;
  width: 40px;
  height: 40px;
  padding: 0;
  border: 0;
  border-radius: 50%;
  background: transparent;
  color: var(--qa-text);
  cursor: pointer;
}
.icon-btn:hover { background: var(--qa-hover); }

.main { flex: 1; min-height: 0; display: flex; flex-direction: column; }

.messages {
  flex: 1;
  min-height: 0;
  overflow-y: auto;
  overscroll-behavior: contain;
  display: flex;
  flex-direction: column;
  gap: 12px;
  padding: 16px;
}
.row { position: relative; display: flex; flex-direction: column; align-items: flex-start; }
.row.user { align-items: flex-end; }
.bubble {
  max-width: min(85%, 640px);
  padding: 10px 14px;
  border-radius: 16px;
  white-space: pre-wrap;
  overflow-wrap: anywhere;
  word-break: break-word;
}
.bot .bubble { background: var(--qa-bot-bg); color: var(--qa-bot-text); border-end-start-radius: 4px; }
.user .bubble { background: var(--qa-user-bg); color: var(--qa-user-text); border-end-end-radius: 4px; }
.answer { min-width: 56px; min-height: 44px; }
.answer[data-state="error"] { box-shadow: inset 3px 0 0 var(--qa-notice); }
.answer-text:empty { display: none; }

.note, .mark, .related {
  display: block;
  margin-top: 6px;
  font-size: 13px;
  line-height: 1.4;
  color: var(--qa-muted);
  white-space: normal;
}
.mark { font-size: 12px; cursor: help; width: fit-content; }
.related .q { color: var(--qa-bot-text); }
.notice { margin: 0; white-space: normal; }
.retry { margin-top: 8px; }

.typing {
  display: inline-flex;
  align-items: center;
  gap: 5px;
  height: 24px;
  padding: 0 2px;
}
.typing span {
  width: 7px;
  height: 7px;
  border-radius: 50%;
  background: var(--qa-muted);
  animation: qa-dot 1.2s infinite ease-in-out both;
}
.typing span:nth-child(2) { animation-delay: 0.2s; }
.typing span:nth-child(3) { animation-delay: 0.4s; }
@keyframes qa-dot {
  0%, 80%, 100% { opacity: 0.35; transform: translateY(0); }
  40% { opacity: 1; transform: translateY(-3px); }
}
@media (prefers-reduced-motion: reduce) {
  .typing span { animation: none; opacity: 0.75; }
}

.suggestions {
  flex: none;
  display: flex;
  flex-wrap: wrap;
  gap: 8px;
  padding: 0 16px 12px;
}
.chip {
  max-width: 100%;
  padding: 6px 12px;
  border: 1px solid var(--qa-chip-border);
  border-radius: 999px;
  background: var(--qa-bg);
  color: var(--qa-chip-text);
  font-size: 14px;
  line-height: 1.35;
  text-align: start;
  cursor: pointer;
}
.chip:hover { background: var(--qa-hover); }

.composer {
  flex: none;
  display: flex;
  align-items: flex-end;
  gap: 8px;
  padding: 12px 16px;
  padding-bottom: max(12px, env(safe-area-inset-bottom));
  border-top: 1px solid var(--qa-border);
}
.field { flex: 1; min-width: 0; display: flex; flex-direction: column; }
textarea {
  display: block;
  width: 100%;
  min-height: 44px;
  max-height: 160px;
  margin: 0;
  padding: 10px 12px;
  border: 1px solid var(--qa-field-border);
  border-radius: 12px;
  background: var(--qa-bg);
  color: var(--qa-text);
  font: inherit;
  font-size: 16px;
  line-height: 1.4;
  resize: none;
  overflow-y: auto;
}
textarea::placeholder { color: var(--qa-muted); opacity: 1; }
.counter { align-self: flex-end; margin-top: 4px; font-size: 12px; color: var(--qa-muted); }
.send {
  flex: none;
  min-height: 44px;
  padding: 10px 18px;
  border: 1px solid transparent;
  border-radius: 12px;
  background: var(--qa-accent);
  color: var(--qa-on-accent);
  font-weight: 600;
  line-height: 1.4;
  cursor: pointer;
}
.send:disabled { opacity: 0.45; cursor: not-allowed; }

:focus { outline: none; }
:focus-visible { outline: 2px solid var(--qa-focus); outline-offset: 2px; }
textarea:focus-visible { outline-offset: 0; border-color: var(--qa-focus); }
.messages:focus-visible { outline-offset: -2px; }

.sr-only {
  position: absolute !important;
  width: 1px;
  height: 1px;
  margin: -1px;
  padding: 0;
  border: 0;
  overflow: hidden;
  clip: rect(0 0 0 0);
  clip-path: inset(50%);
  white-space: nowrap;
}

@media (forced-colors: active) {
  .bubble, .chip, .btn, .send { border: 1px solid CanvasText; }
  .typing span { background: CanvasText; }
}

@media (max-width: 480px) {
  .header { padding: 6px 8px 6px 12px; min-height: 52px; }
  .title { font-size: 16px; }
  .messages { padding: 12px; gap: 10px; }
  .bubble { max-width: 90%; }
  .suggestions { padding: 0 12px 10px; }
  .composer { padding: 8px 12px; padding-bottom: max(8px, env(safe-area-inset-bottom)); }
  .send { padding: 10px 14px; }
}
`;

  // ---- the element ------------------------------------------------------------------

  class QaChat extends HTMLElement {
    static get observedAttributes() {
      return ['data-lang', 'data-title'];
    }

    /** The UI string table (used by the widget too). */
    static get strings() {
      return STRINGS;
    }

    constructor() {
      super();
      this._root = this.attachShadow({ mode: 'open' });
      this._built = false;
      this._busy = false;
      this._asked = false;
    }

    connectedCallback() {
      if (!this._built) this._build();
    }

    attributeChangedCallback(name, oldValue, newValue) {
      if (!this._built || oldValue === newValue) return;
      if (name === 'data-lang') {
        const l = normLang(newValue);
        if (l && l !== this._lang) this.setLanguage(l, false);
      } else if (name === 'data-title') {
        this._applyLanguage(false);
      }
    }

    /** "zh" or "en". */
    get language() {
      return this._lang || null;
    }

    /** The title shown in the header, in the current language. */
    get chatTitle() {
      if (!this._built) return '';
      return nonEmpty(this.getAttribute('data-title')) || this._config.title[this._lang];
    }

    /** Whether a question is being answered. */
    get busy() {
      return this._busy;
    }

    setLanguage(lang, remember = true) {
      const l = normLang(lang);
      if (!l || !this._built) return;
      this._lang = l;
      if (remember) storeLang(l);
      this._applyLanguage(true);
    }

    focusInput() {
      if (this._input) this._input.focus();
    }

    /** Asks a question as if typed; resolves when it is answered or has failed. */
    ask(question) {
      const q = String(question === undefined || question === null ? '' : question)
        .trim()
        .slice(0, MAX_CHARS);
      if (!q || this._busy || !this._built) return Promise.resolve();
      this._removeSuggestions();
      this._appendQuestion(q);
      const a = this._appendAnswer();
      return this._run(q, a);
    }

    // ---- building -----------------------------------------------------------------

    _build() {
      this._built = true;
      this._config = loadConfig();
      const mode = this.getAttribute('data-mode');
      this._mode =
        mode === 'page' || mode === 'embedded'
          ? mode
          : this.getRootNode() instanceof ShadowRoot
            ? 'embedded'
            : 'page';
      this._lang =
        storedLang() || normLang(this.getAttribute('data-lang')) || this._config.lang || browserLang();

      const page = this._mode === 'page';
      const root = this._root;
      root.textContent = '';
      root.append(h('style', null, CSS));

      this._title = h(page ? 'h1' : 'h2', { class: 'title', 'data-qa': 'title' });
      this._langBtn = h('button', { type: 'button', class: 'btn', 'data-qa': 'lang-switch' });
      this._langBtn.addEventListener('click', () => this.setLanguage(otherLang(this._lang), true));
      const actions = h('div', { class: 'actions' }, this._langBtn);
      if (this.hasAttribute('closable')) {
        const close = this._i18n(
          h(
            'button',
            { type: 'button', class: 'icon-btn', 'data-qa': 'close' },
            icon(['M6 6l12 12', 'M18 6L6 18']),
          ),
          { aria: 'close' },
        );
        close.addEventListener('click', () => {
          this.dispatchEvent(new CustomEvent('qa-chat-close', { bubbles: true, composed: true }));
        });
        actions.append(close);
      }
      const header = h(page ? 'header' : 'div', { class: 'header' }, this._title, actions);

      this._messages = this._i18n(
        h('div', {
          class: 'messages',
          'data-qa': 'messages',
          role: 'log',
          'aria-live': 'polite',
          'aria-relevant': 'additions text',
          tabindex: '0',
        }),
        { aria: 'messages' },
      );
      this._greeting = h('div', { class: 'bubble', 'data-qa': 'greeting' });
      this._messages.append(this._row('bot', this._greeting));

      this._suggestions = this._i18n(
        h('div', { class: 'suggestions', 'data-qa': 'suggestions', role: 'group' }),
        { aria: 'suggestions' },
      );

      this._input = this._i18n(
        h('textarea', {
          id: 'qa-input',
          name: 'question',
          'data-qa': 'input',
          rows: '1',
          maxlength: String(MAX_CHARS),
          autocomplete: 'off',
          enterkeyhint: 'send',
        }),
        { placeholder: 'placeholder' },
      );
      const label = this._i18n(h('label', { class: 'sr-only', for: 'qa-input' }), { text: 'inputLabel' });
      this._counter = h('span', { class: 'counter', 'data-qa': 'counter', hidden: true });
      this._send = this._i18n(
        h('button', { type: 'submit', class: 'send', 'data-qa': 'send', disabled: true }),
        { text: 'send' },
      );
      this._form = h(
        'form',
        { class: 'composer', 'data-qa': 'form', novalidate: true },
        label,
        h('div', { class: 'field' }, this._input, this._counter),
        this._send,
      );

      this._form.addEventListener('submit', (e) => {
        e.preventDefault();
        this._submit();
      });
      // Keep the focus in the input when the send button is pressed with a pointer.
      this._send.addEventListener('mousedown', (e) => e.preventDefault());
      this._input.addEventListener('keydown', (e) => {
        if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
          e.preventDefault();
          this._submit();
        }
      });
      this._input.addEventListener('input', () => this._onInput());

      const main = h(page ? 'main' : 'div', { class: 'main' }, this._messages, this._suggestions, this._form);
      this._app = h(
        'div',
        { class: 'app', 'data-mode': this._mode },
        h('div', { class: 'column' }, header, main),
      );
      root.append(this._app);

      if (page && (!document.title || document.title.includes('{{'))) {
        document.title = this.chatTitle || t(this._lang, 'defaultTitle');
      }
      this._applyLanguage(false);
      this._updateSend();
    }

    /** Binds an element's text/aria-label/title/placeholder to UI strings. */
    _i18n(el, keys) {
      if (keys.text) el.dataset.i18n = keys.text;
      if (keys.aria) el.dataset.i18nAria = keys.aria;
      if (keys.title) el.dataset.i18nTitle = keys.title;
      if (keys.placeholder) el.dataset.i18nPlaceholder = keys.placeholder;
      if (keys.n !== undefined) el.dataset.i18nN = String(keys.n);
      if (this._lang) this._translate(el);
      return el;
    }

    _translate(el) {
      const L = this._lang;
      const d = el.dataset;
      const n = d.i18nN;
      if (d.i18n) el.textContent = t(L, d.i18n, n);
      if (d.i18nAria) el.setAttribute('aria-label', t(L, d.i18nAria, n));
      if (d.i18nTitle) el.setAttribute('title', t(L, d.i18nTitle, n));
      if (d.i18nPlaceholder) el.setAttribute('placeholder', t(L, d.i18nPlaceholder, n));
    }

    _applyLanguage(changed) {
      const L = this._lang;
      this.setAttribute('lang', L);
      if (this._mode === 'page') {
        document.documentElement.setAttribute('lang', L);
        if (changed) document.title = this.chatTitle;
      }
      this._title.textContent = this.chatTitle;
      this._langBtn.textContent = t(L, 'langSwitch');
      this._langBtn.setAttribute('aria-label', t(L, 'langSwitchLabel'));
      this._langBtn.setAttribute('lang', t(L, 'langSwitchLang'));
      this._greeting.textContent = this._config.greeting[L];
      for (const el of this._root.querySelectorAll(
        '[data-i18n], [data-i18n-aria], [data-i18n-title], [data-i18n-placeholder]',
      )) {
        this._translate(el);
      }
      this._renderSuggestions();
      if (changed) {
        this.dispatchEvent(new CustomEvent('qa-chat-language', { detail: { lang: L }, bubbles: true }));
      }
    }

    _renderSuggestions() {
      if (!this._suggestions) return;
      this._suggestions.textContent = '';
      const list = this._asked ? [] : this._config.suggestions[this._lang] || [];
      for (const q of list) {
        const b = h('button', { type: 'button', class: 'chip', 'data-qa': 'suggestion' }, q);
        b.addEventListener('click', () => {
          if (this._busy) return;
          this.ask(q);
          this.focusInput();
        });
        this._suggestions.append(b);
      }
      this._suggestions.hidden = list.length === 0;
    }

    _removeSuggestions() {
      this._asked = true;
      if (this._suggestions && !this._suggestions.hidden) {
        const hadFocus = this._root.activeElement && this._suggestions.contains(this._root.activeElement);
        this._suggestions.textContent = '';
        this._suggestions.hidden = true;
        if (hadFocus) this.focusInput();
      }
    }

    _row(who, bubble) {
      const row = h('div', { class: `row ${who}` });
      row.append(this._i18n(h('span', { class: 'sr-only' }), { text: who === 'bot' ? 'speakerBot' : 'speakerUser' }));
      row.append(bubble);
      return row;
    }

    // ---- input --------------------------------------------------------------------

    _onInput() {
      this._resize();
      const len = this._input.value.length;
      if (len >= COUNTER_FROM) {
        this._counter.dataset.i18n = 'counter';
        this._counter.dataset.i18nN = String(len);
        this._translate(this._counter);
        this._counter.hidden = false;
      } else {
        this._counter.hidden = true;
      }
      this._updateSend();
    }

    _resize() {
      const el = this._input;
      el.style.height = 'auto';
      if (el.value) el.style.height = `${Math.min(el.scrollHeight + 2, 160)}px`;
      else el.style.removeProperty('height');
    }

    _updateSend() {
      if (!this._send) return;
      this._send.disabled = this._busy || this._input.value.trim() === '';
    }

    _submit() {
      const q = this._input.value.trim();
      if (!q || this._busy) return;
      this._input.value = '';
      this._onInput();
      this.ask(q);
      this.focusInput();
    }

    _setBusy(busy) {
      this._busy = busy;
      if (busy) this._messages.setAttribute('aria-busy', 'true');
      else this._messages.removeAttribute('aria-busy');
      for (const b of this._root.querySelectorAll('[data-qa="retry"]')) b.disabled = busy;
      this._updateSend();
    }

    // ---- messages -----------------------------------------------------------------

    _nearBottom() {
      const m = this._messages;
      return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
    }

    _scrollDown(force) {
      const m = this._messages;
      if (force || this._stick) m.scrollTop = m.scrollHeight;
    }

    _appendQuestion(q) {
      const bubble = h('div', { class: 'bubble', 'data-qa': 'question' }, q);
      this._messages.append(this._row('user', bubble));
      this._scrollDown(true);
    }

    _appendAnswer() {
      const el = h('div', { class: 'bubble answer', 'data-qa': 'answer', 'data-state': 'waiting' });
      const text = h('div', { class: 'answer-text', 'data-qa': 'answer-text' });
      el.append(text);
      const a = { el, text, node: null, typing: null, note: null, started: false };
      this._messages.append(this._row('bot', el));
      this._showTyping(a, true);
      this._scrollDown(true);
      return a;
    }

    _setState(a, state) {
      a.el.setAttribute('data-state', state);
    }

    _showTyping(a, on) {
      if (on && !a.typing) {
        a.typing = this._i18n(
          h('span', { class: 'typing', 'data-qa': 'typing', role: 'img' }, h('span'), h('span'), h('span')),
          { aria: 'typing' },
        );
        a.text.after(a.typing);
      } else if (!on && a.typing) {
        a.typing.remove();
        a.typing = null;
      }
    }

    _setNote(a, kind, key, n) {
      if (!a.note || a.note.dataset.qa !== kind) {
        this._clearNote(a);
        a.note = h('span', { class: 'note', 'data-qa': kind });
        a.el.append(a.note);
      }
      this._i18n(a.note, n === undefined ? { text: key } : { text: key, n });
    }

    _clearNote(a) {
      if (a.note) {
        a.note.remove();
        a.note = null;
      }
    }

    _clearText(a) {
      a.text.textContent = '';
      a.node = null;
    }

    _appendText(a, piece) {
      this._stick = this._nearBottom();
      if (!a.started) {
        a.started = true;
        this._showTyping(a, false);
        this._clearNote(a);
        this._setState(a, 'streaming');
      }
      if (!a.node) {
        a.node = document.createTextNode('');
        a.text.append(a.node);
      }
      a.node.data += piece;
      this._scrollDown(false);
    }

    _resetText(a) {
      this._clearText(a);
      if (a.started) this._setState(a, 'streaming');
    }

    /** Resets a bubble for a new attempt. */
    _prepareAttempt(a) {
      this._clearText(a);
      a.started = false;
      for (const el of a.el.querySelectorAll('.mark, .related, .notice, .retry')) el.remove();
      for (const name of ['data-source', 'data-degraded', 'data-request-id', 'data-model', 'data-continued']) {
        a.el.removeAttribute(name);
      }
      this._setState(a, 'waiting');
      this._showTyping(a, true);
    }

    _finish(a, d) {
      this._stick = this._nearBottom();
      // Let the live region speak again before the final text goes in: the answer is
      // announced once, whole, and not piece by piece.
      this._messages.removeAttribute('aria-busy');
      this._showTyping(a, false);
      this._clearNote(a);
      const text = typeof d.answer === 'string' ? d.answer : a.node ? a.node.data : '';
      a.text.textContent = text;
      a.node = a.text.firstChild;
      const degraded = d.degraded === true;
      a.el.setAttribute('data-source', typeof d.source === 'string' ? d.source : '');
      a.el.setAttribute('data-degraded', degraded ? 'true' : 'false');
      if (typeof d.request_id === 'string') a.el.setAttribute('data-request-id', d.request_id);
      if (typeof d.model === 'string') a.el.setAttribute('data-model', d.model);
      if (d.continued === true) a.el.setAttribute('data-continued', 'true');
      const match = d.match && typeof d.match === 'object' ? d.match : null;
      if (match && nonEmpty(match.question)) {
        const rel = h(
          'span',
          { class: 'related', 'data-qa': 'related' },
          this._i18n(h('span', { class: 'label' }), { text: 'related' }),
          ' ',
          h('span', { class: 'q', 'data-qa': 'related-question' }, match.question),
        );
        a.el.append(rel);
      }
      if (degraded) {
        a.el.append(
          this._i18n(h('span', { class: 'mark', 'data-qa': 'degraded-mark' }), { text: 'degraded', title: 'degradedTip' }),
        );
      }
      this._setState(a, 'done');
      this._scrollDown(false);
    }

    _fail(a, kind, message) {
      this._stick = this._nearBottom();
      this._messages.removeAttribute('aria-busy');
      this._showTyping(a, false);
      this._clearNote(a);
      this._clearText(a);
      if (kind === 'message') {
        a.text.textContent = message;
      } else {
        const key = kind === 'busy' ? 'busyGaveUp' : 'unreachable';
        a.el.append(this._i18n(h('p', { class: 'notice', 'data-qa': kind === 'busy' ? 'busy' : 'unreachable' }), { text: key }));
        const retry = this._i18n(h('button', { type: 'button', class: 'btn retry', 'data-qa': 'retry' }), { text: 'retry' });
        retry.addEventListener('click', () => {
          if (this._busy) return;
          this._run(a.question, a);
        });
        a.el.append(retry);
      }
      this._setState(a, 'error');
      this._scrollDown(false);
    }

    // ---- transport ----------------------------------------------------------------

    _askUrl() {
      const attr = this.getAttribute('endpoint');
      const base = (attr !== null ? attr : this._config.endpoint || '').trim().replace(/\/+$/, '');
      return `${base}/ask`;
    }

    async _run(question, a) {
      a.question = question;
      this._setBusy(true);
      this._prepareAttempt(a);
      try {
        let busyRetries = 0;
        let networkRetries = 0;
        for (;;) {
          let r;
          try {
            r = await this._attempt(question, a);
          } catch (_) {
            r = { kind: 'network' };
          }
          if (r.kind === 'done') return;
          if (r.kind === 'error') {
            this._fail(a, 'message', r.message);
            return;
          }
          if (r.kind === 'busy') {
            if (busyRetries >= MAX_BUSY_RETRIES) {
              this._fail(a, 'busy');
              return;
            }
            busyRetries += 1;
            await this._countdown(a, r.wait);
          } else {
            if (networkRetries >= NETWORK_BACKOFF_MS.length) {
              this._fail(a, 'unreachable');
              return;
            }
            const wait = NETWORK_BACKOFF_MS[networkRetries];
            networkRetries += 1;
            this._prepareAttempt(a);
            this._showTyping(a, false);
            this._setNote(a, 'reconnecting', 'reconnecting');
            await sleep(wait);
          }
          // The next attempt: the answer starts again (a "reconnecting" note stays until
          // the first piece comes).
          this._prepareAttempt(a);
        }
      } catch (_) {
        this._fail(a, 'unreachable');
      } finally {
        this._setBusy(false);
      }
    }

    async _countdown(a, seconds) {
      this._prepareAttempt(a);
      this._showTyping(a, false);
      for (let n = seconds; n > 0; n -= 1) {
        this._setNote(a, 'countdown', 'busy', n);
        await sleep(1000);
      }
      this._clearNote(a);
    }

    /* One POST /ask. Resolves to {kind: "done"} (the bubble is finished), {kind: "busy",
     * wait} (503: retry after `wait` seconds), {kind: "error", message} (a refusal to
     * show), or {kind: "network"} (nothing usable came back: retry); rejects on a
     * network failure. */
    async _attempt(question, a) {
      const controller = typeof AbortController === 'function' ? new AbortController() : null;
      const timer = controller ? setTimeout(() => controller.abort(), ATTEMPT_TIMEOUT_MS) : 0;
      try {
        const res = await fetch(this._askUrl(), {
          method: 'POST',
          headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
          body: JSON.stringify({ question }),
          cache: 'no-store',
          credentials: 'omit',
          signal: controller ? controller.signal : undefined,
        });

        if (res.status === 503 || res.status === 429) {
          const wait = retryAfterSeconds(res.headers.get('Retry-After'));
          await res.text().catch(() => '');
          return { kind: 'busy', wait };
        }
        if (!res.ok) {
          let message = null;
          try {
            const body = await res.json();
            if (body && body.error && nonEmpty(body.error.message)) message = body.error.message;
          } catch (_) {
            /* not a JSON error */
          }
          if (message) return { kind: 'error', message };
          if (res.status >= 500) return { kind: 'network' };
          return { kind: 'error', message: t(this._lang, 'httpError', res.status) };
        }

        const type = (res.headers.get('Content-Type') || '').toLowerCase();
        if (!type.includes('text/event-stream')) {
          // A whole JSON answer (the service answers so when it does not stream).
          const body = await res.json();
          if (body && typeof body.answer === 'string') {
            this._finish(a, body);
            return { kind: 'done' };
          }
          return { kind: 'network' };
        }

        let done = null;
        const parser = sseParser((event, data) => {
          if (done) return;
          let obj;
          try {
            obj = JSON.parse(data);
          } catch (_) {
            return;
          }
          if (!obj || typeof obj !== 'object') return;
          if (event === 'delta') {
            if (typeof obj.text === 'string') this._appendText(a, obj.text);
          } else if (event === 'reset') {
            this._resetText(a);
          } else if (event === 'done') {
            done = obj;
          }
        });

        if (!res.body || typeof res.body.getReader !== 'function') {
          parser.push(await res.text());
          parser.end();
        } else {
          const reader = res.body.getReader();
          const decoder = new TextDecoder('utf-8');
          while (!done) {
            const { value, done: end } = await reader.read();
            if (end) {
              parser.push(decoder.decode());
              parser.end();
              break;
            }
            parser.push(decoder.decode(value, { stream: true }));
          }
          if (done) reader.cancel().catch(() => {});
        }
        if (!done) return { kind: 'network' };
        this._finish(a, done);
        return { kind: 'done' };
      } finally {
        if (timer) clearTimeout(timer);
      }
    }
  }

  customElements.define('qa-chat', QaChat);
})();
