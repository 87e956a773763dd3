/* resilient-qa embeddable widget: boots a floating chat button and panel.
 *
 * Served as /widget.js = chat.js + "window.QA_CHAT_CONFIG = {...};" + this file, and
 * included with one tag:
 *   <script src="https://HOST/widget.js" data-endpoint="https://HOST" async></script>
 * Script attributes: data-endpoint (default: the origin of the script's src),
 * data-lang ("zh" | "en"), data-position ("right", the default, or "left"), data-title.
 */
(() => {
  'use strict';

  // Captured at once: document.currentScript is only set while this script first runs.
  const script =
    document.currentScript ||
    (() => {
      const all = document.querySelectorAll('script[src]');
      for (let i = all.length - 1; i >= 0; i -= 1) {
        if (/\/widget\.js(?:[?#]|$)/.test(all[i].src)) return all[i];
      }
      return null;
    })();

  if (window.__qaChatWidget) return;
  window.__qaChatWidget = true;

  const data = (script && script.dataset) || {};

  function scriptOrigin() {
    try {
      const origin = new URL(script.getAttribute('src'), document.baseURI).origin;
      return origin && origin !== 'null' ? origin : '';
    } catch (_) {
      return '';
    }
  }

  const endpoint =
    typeof data.endpoint === 'string' && data.endpoint.trim() !== '' ? data.endpoint.trim() : scriptOrigin();
  const lang = data.lang === 'zh' || data.lang === 'en' ? data.lang : null;
  const position = data.position === 'left' ? 'left' : 'right';
  const title = typeof data.title === 'string' && data.title.trim() !== '' ? data.title.trim() : null;

  const CSS = `
:host { all: initial; }
*, *::before, *::after { box-sizing: border-box; }
[hidden] { display: none !important; }
.wrap {
  --qa-accent: #1d4ed8;
  --qa-on-accent: #ffffff;
  --qa-bg: #ffffff;
  --qa-border: #d0d7de;
  --qa-focus: #1d4ed8;
  --qa-shadow: 0 12px 32px rgba(15, 23, 42, 0.22), 0 2px 6px rgba(15, 23, 42, 0.12);
  font-family: system-ui, -apple-system, "Segoe UI", "PingFang SC", "Microsoft YaHei", sans-serif;
  font-size: 15px;
  line-height: 1.5;
  letter-spacing: normal;
  text-transform: none;
  visibility: visible;
}
@media (forced-colors: active) {
  .launcher { border: 2px solid ButtonText; }
  .panel { border: 2px solid CanvasText; }
}
@media (prefers-color-scheme: dark) {
  .wrap {
    --qa-accent: #8ab4ff;
    --qa-on-accent: #0b1630;
    --qa-bg: #15181c;
    --qa-border: #343a42;
    --qa-focus: #8ab4ff;
    --qa-shadow: 0 12px 32px rgba(0, 0, 0, 0.6), 0 2px 6px rgba(0, 0, 0, 0.4);
  }
}
.launcher {
  position: fixed;
  bottom: 20px;
  right: 20px;
  z-index: 2147483000;
  display: flex;
  align-items: center;
  justify-content: center;
  width: 56px;
  height: 56px;
  margin: 0;
  padding: 0;
  border: 0;
  border-radius: 50%;
  background: var(--qa-accent);
  color: var(--qa-on-accent);
  box-shadow: var(--qa-shadow);
  cursor: pointer;
  transition: transform 0.15s ease;
}
.launcher:hover { transform: scale(1.05); }
.launcher svg { width: 26px; height: 26px; }
.launcher .when-open { display: none; }
.launcher[aria-expanded="true"] .when-open { display: block; }
.launcher[aria-expanded="true"] .when-closed { display: none; }
.panel {
  position: fixed;
  bottom: 88px;
  right: 20px;
  z-index: 2147483000;
  display: flex;
  flex-direction: column;
  width: 380px;
  height: 560px;
  max-width: calc(100vw - 40px);
  max-height: calc(100vh - 108px);
  overflow: hidden;
  border: 1px solid var(--qa-border);
  border-radius: 16px;
  background: var(--qa-bg);
  box-shadow: var(--qa-shadow);
}
.left .launcher { right: auto; left: 20px; }
.left .panel { right: auto; left: 20px; }
.panel qa-chat { display: block; flex: 1 1 auto; min-height: 0; height: 100%; }
:focus { outline: none; }
:focus-visible { outline: 3px solid var(--qa-focus); outline-offset: 3px; }
@media (max-width: 479.98px) {
  .panel, .left .panel {
    top: 0;
    right: 0;
    bottom: 0;
    left: 0;
    width: auto;
    height: auto;
    max-width: none;
    max-height: none;
    border: 0;
    border-radius: 0;
  }
  .open .launcher { display: none; }
}
@media (prefers-reduced-motion: reduce) {
  .launcher { transition: none; }
  .launcher:hover { transform: none; }
}
`;

  const SVG_NS = 'http://www.w3.org/2000/svg';

  function icon(cls, paths) {
    const svg = document.createElementNS(SVG_NS, 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('aria-hidden', 'true');
    svg.setAttribute('focusable', 'false');
    svg.setAttribute('class', cls);
    for (const d of paths) {
      const p = document.createElementNS(SVG_NS, 'path');
      p.setAttribute('d', d);
      p.setAttribute('fill', 'none');
      p.setAttribute('stroke', 'currentColor');
      p.setAttribute('stroke-width', '2');
      p.setAttribute('stroke-linecap', 'round');
      p.setAttribute('stroke-linejoin', 'round');
      svg.append(p);
    }
    return svg;
  }

  function boot() {
    const QaChat = window.customElements && customElements.get('qa-chat');
    if (!QaChat || !document.body) return;
    const strings = QaChat.strings;
    const t = (l, key) => (strings[l] || strings.en)[key];

    const host = document.createElement('qa-chat-widget');
    host.setAttribute('data-qa', 'widget');
    const root = host.attachShadow({ mode: 'open' });

    const style = document.createElement('style');
    style.textContent = CSS;

    const wrap = document.createElement('div');
    wrap.className = `wrap ${position}`;
    wrap.setAttribute('role', 'region');

    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'launcher';
    button.setAttribute('data-qa', 'widget-button');
    button.setAttribute('aria-expanded', 'false');
    button.setAttribute('aria-controls', 'qa-widget-panel');
    button.append(
      icon('when-closed', ['M21 12a8 8 0 0 1-11.6 7.1L4 20.5l1.4-4.6A8 8 0 1 1 21 12z']),
      icon('when-open', ['M6 6l12 12', 'M18 6L6 18']),
    );

    const panel = document.createElement('div');
    panel.className = 'panel';
    panel.id = 'qa-widget-panel';
    panel.setAttribute('data-qa', 'widget-panel');
    panel.setAttribute('role', 'dialog');
    panel.hidden = true;

    const chat = document.createElement('qa-chat');
    chat.setAttribute('endpoint', endpoint);
    chat.setAttribute('data-mode', 'embedded');
    chat.setAttribute('closable', '');
    if (lang) chat.setAttribute('data-lang', lang);
    if (title) chat.setAttribute('data-title', title);
    panel.append(chat);

    wrap.append(button, panel);
    root.append(style, wrap);
    document.body.append(host);

    function label() {
      const l = chat.language || lang || 'en';
      button.setAttribute('aria-label', t(l, 'widgetButton'));
      wrap.setAttribute('aria-label', t(l, 'widgetRegion'));
      panel.setAttribute('aria-label', chat.chatTitle || title || t(l, 'defaultTitle'));
    }

    function open() {
      panel.hidden = false;
      wrap.classList.add('open');
      button.setAttribute('aria-expanded', 'true');
      chat.focusInput();
    }

    function close() {
      // The button comes back (it is hidden under a full-screen panel), takes the focus,
      // and only then does the panel go, so that the focus is never lost.
      wrap.classList.remove('open');
      button.setAttribute('aria-expanded', 'false');
      button.focus();
      panel.hidden = true;
    }

    button.addEventListener('click', () => {
      if (panel.hidden) open();
      else close();
    });
    chat.addEventListener('qa-chat-close', () => close());
    chat.addEventListener('qa-chat-language', () => label());
    root.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && !e.isComposing && !panel.hidden) {
        e.preventDefault();
        e.stopPropagation();
        close();
      }
    });

    label();
  }

  if (document.body) boot();
  else document.addEventListener('DOMContentLoaded', boot, { once: true });
})();
