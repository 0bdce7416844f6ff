// The widget's stylesheet, scoped to its shadow root: the host page's CSS cannot reach in,
// and nothing here leaks out. Colours come from CSS variables set from the tenant's branding.

export const CSS = `
:host { all: initial; }
.root {
  --bg: #ffffff; --fg: #1d2330; --muted: #4f5869; --line: #d9dde5; --bubble: #eef1f6;
  --field: #ffffff; --danger: #a4161a; --shadow: 0 8px 28px rgba(15, 23, 42, 0.22);
  font-family: var(--font), system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  font-size: 15px; line-height: 1.4; color: var(--fg);
  position: fixed; bottom: 20px; right: 20px; z-index: 2147483000;
  display: flex; flex-direction: column; align-items: flex-end; gap: 12px;
}
.root[data-position="bottom-left"] { right: auto; left: 20px; align-items: flex-start; }
.root[data-theme="dark"] {
  --bg: #161b26; --fg: #eef1f6; --muted: #b4bccb; --line: #323a4a; --bubble: #252d3c;
  --field: #0f131b; --danger: #ff8a8f; --shadow: 0 8px 28px rgba(0, 0, 0, 0.6);
}
*, *::before, *::after { box-sizing: border-box; }
[hidden] { display: none !important; }
button, input, textarea { font: inherit; color: inherit; }
:focus-visible { outline: 3px solid var(--primary); outline-offset: 2px; }
.sr-only {
  position: absolute; width: 1px; height: 1px; padding: 0; margin: -1px; overflow: hidden;
  clip: rect(0 0 0 0); white-space: nowrap; border: 0;
}
.launcher {
  position: relative; width: 60px; height: 60px; border-radius: 50%; border: 0; cursor: pointer;
  background: var(--primary); color: var(--on-primary); box-shadow: var(--shadow);
  display: flex; align-items: center; justify-content: center;
}
.launcher svg { width: 28px; height: 28px; fill: currentColor; }
.badge {
  position: absolute; top: -4px; right: -4px; min-width: 22px; height: 22px; padding: 0 6px;
  border-radius: 11px; background: #b3261e; color: #ffffff; font-size: 12px; font-weight: 700;
  display: flex; align-items: center; justify-content: center; border: 2px solid #ffffff;
}
.panel {
  width: min(370px, calc(100vw - 40px)); height: min(560px, calc(100vh - 110px));
  background: var(--bg); color: var(--fg); border-radius: 14px; box-shadow: var(--shadow);
  display: flex; flex-direction: column; overflow: hidden; border: 1px solid var(--line);
}
.header {
  background: var(--primary); color: var(--on-primary); padding: 12px 14px;
  display: flex; align-items: center; gap: 10px;
}
.header img { width: 32px; height: 32px; border-radius: 6px; object-fit: cover; background: #ffffff; }
.heading { flex: 1; min-width: 0; }
.heading h2 { margin: 0; font-size: 16px; font-weight: 700; }
.heading p { margin: 0; font-size: 13px; }
.icon-btn {
  border: 0; background: transparent; color: inherit; cursor: pointer; width: 36px; height: 36px;
  border-radius: 8px; font-size: 22px; line-height: 1;
}
.icon-btn:hover { background: rgba(0, 0, 0, 0.12); }
.banner { padding: 8px 14px; font-size: 13px; background: var(--bubble); border-bottom: 1px solid var(--line); }
.banner.warn { background: #fff4ce; color: #3d2e00; }
.root[data-theme="dark"] .banner.warn { background: #4a3b00; color: #fff4ce; }
.body { flex: 1; overflow-y: auto; padding: 12px 14px; display: flex; flex-direction: column; gap: 8px; }
.log { margin: 0; padding: 0; display: flex; flex-direction: column; gap: 8px; }
.msg { max-width: 82%; display: flex; gap: 6px; align-items: flex-end; }
.msg .bubble { padding: 8px 11px; border-radius: 12px; background: var(--bubble); white-space: pre-wrap; overflow-wrap: anywhere; }
.msg.visitor { align-self: flex-end; }
.msg.visitor .bubble { background: var(--primary); color: var(--on-primary); }
.msg.system, .note { margin: 0; align-self: center; max-width: 92%; text-align: center; font-size: 13px; color: var(--muted); }
.msg.system .bubble { background: transparent; padding: 2px 4px; }
.msg img { width: 26px; height: 26px; border-radius: 50%; }
.greeting { align-self: flex-start; background: var(--bubble); padding: 8px 11px; border-radius: 12px; margin: 0; }
.typing { margin: 0; min-height: 1.2em; font-size: 13px; color: var(--muted); font-style: italic; }
.footer { border-top: 1px solid var(--line); padding: 10px 12px; }
.composer { display: flex; gap: 8px; align-items: flex-end; }
textarea, input {
  width: 100%; border: 1px solid var(--line); background: var(--field); border-radius: 8px;
  padding: 8px 10px; resize: none;
}
.composer textarea { height: 42px; max-height: 120px; }
.btn {
  border: 0; border-radius: 8px; padding: 9px 14px; cursor: pointer; font-weight: 600;
  background: var(--primary); color: var(--on-primary); white-space: nowrap;
}
.btn.secondary { background: transparent; color: var(--fg); border: 1px solid var(--line); }
.btn:disabled { opacity: 0.6; cursor: default; }
.row { display: flex; justify-content: space-between; align-items: center; gap: 8px; margin-top: 8px; }
form.stack { display: flex; flex-direction: column; gap: 8px; }
form.stack label { display: flex; flex-direction: column; gap: 3px; font-size: 13px; font-weight: 600; }
form.stack h3 { margin: 0; font-size: 15px; }
form.stack p { margin: 0; font-size: 13px; color: var(--muted); }
fieldset { border: 0; margin: 0; padding: 0; }
legend { font-weight: 700; margin-bottom: 6px; padding: 0; }
.stars { display: flex; gap: 4px; }
.stars label { cursor: pointer; }
.stars input { position: absolute; opacity: 0; width: 1px; height: 1px; }
.stars span {
  display: inline-flex; width: 40px; height: 40px; align-items: center; justify-content: center;
  border-radius: 8px; border: 1px solid var(--line); font-size: 20px; color: var(--muted);
}
.stars input:checked + span, .stars label.on span { background: var(--primary); color: var(--on-primary); border-color: var(--primary); }
.stars input:focus-visible + span { outline: 3px solid var(--primary); outline-offset: 2px; }
.error { color: var(--danger); font-size: 13px; margin: 0; }
.notice { padding: 16px; text-align: center; }
`;
