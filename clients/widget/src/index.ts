// Entry of widget.js: finds its own script tag, reads `data-api-key` (and the optional
// `data-language`, `data-open`), and mounts the widget on the page. The server it talks to
// is the origin the script was loaded from, so the one-line embed needs nothing else:
//   <script src="https://HOST/widget.js" data-api-key="..." async></script>

import { Widget } from "./widget.js";

declare global {
  interface Window {
    /** Set once the widget is on the page (a second copy of the script does nothing). */
    chatEngineWidget?: Widget;
  }
}

function ownScript(): HTMLScriptElement | null {
  const current = document.currentScript;
  if (current instanceof HTMLScriptElement) return current;
  return document.querySelector<HTMLScriptElement>('script[data-api-key][src*="widget.js"]');
}

function boot(script: HTMLScriptElement): void {
  if (window.chatEngineWidget) return;
  const apiKey = script.dataset.apiKey;
  if (!apiKey) {
    console.error("chat-engine widget: the script tag needs data-api-key");
    return;
  }
  const host = document.createElement("div");
  host.id = "chat-engine-widget";
  document.body.append(host);
  window.chatEngineWidget = new Widget(host, {
    apiKey,
    baseUrl: script.dataset.baseUrl || new URL(script.src, location.href).origin,
    language: script.dataset.language,
    open: script.dataset.open === "true",
  });
}

const script = ownScript();
if (script) {
  if (document.body) boot(script);
  else document.addEventListener("DOMContentLoaded", () => boot(script), { once: true });
}
