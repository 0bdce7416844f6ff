// The chat widget: a launcher and a panel inside a shadow root, driven by the visitor facade
// of @chat-engine/sdk. It keeps the visitor and the open chat across page reloads (the SDK's
// storage), shows each message once, and tells the visitor what is going on (queue place,
// the agent, typing, connection lost / restored, not allowed, rate limited).

import {
  ChatEngineSDK,
  PermissionDeniedError,
  RateLimitedError,
  UnauthenticatedError,
  type Chat,
  type ChatMessage,
  type WidgetConfig,
} from "@chat-engine/sdk";
import { chooseLanguage, fmt, texts, waitText, type Lang, type Texts } from "./i18n.js";
import { CSS } from "./styles.js";
import { onPrimary } from "./colors.js";

/** What the embedding script tag configures. */
export interface WidgetOptions {
  /** The tenant's widget key. */
  apiKey: string;
  /** The chat-engine server (the origin widget.js was loaded from). */
  baseUrl: string;
  /** A language to use instead of the browser's (en, es or fr). */
  language?: string | null;
  /** Opens the panel at once. */
  open?: boolean;
}

type Mode = "loading" | "chat" | "offline" | "rating" | "rated" | "blocked";

const CHAT_ICON =
  '<svg viewBox="0 0 24 24" aria-hidden="true" focusable="false"><path d="M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H8l-4 4V6a2 2 0 0 1 2-2z"/></svg>';
const TYPING_IDLE_MS = 4000;
const TYPING_REPEAT_MS = 3000;
const EMAIL = /^[^\s@]+@[^\s@]+\.[^\s@]+$/;

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

/** Storage that survives a blocked localStorage (private modes, sandboxed frames). */
function pageStorage(): Storage | undefined {
  try {
    const s = window.localStorage;
    const probe = "chat-engine:probe";
    s.setItem(probe, "1");
    s.removeItem(probe);
    return s;
  } catch {
    return undefined;
  }
}

/** A short, stable tag of the key, so two tenants' widgets on one site keep apart. */
function keyTag(key: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0).toString(36);
}

/** The widget; {@link mount} makes one. */
export class Widget {
  private readonly opts: WidgetOptions;
  private readonly sdk: ChatEngineSDK;
  private readonly root: HTMLDivElement;
  private readonly launcher: HTMLButtonElement;
  private readonly badge: HTMLSpanElement;
  private readonly panel: HTMLElement;
  private readonly title: HTMLHeadingElement;
  private readonly subtitle: HTMLParagraphElement;
  private readonly logo: HTMLImageElement;
  private readonly closeBtn: HTMLButtonElement;
  private readonly banner: HTMLDivElement;
  private readonly conn: HTMLDivElement;
  private readonly body: HTMLDivElement;
  private readonly log: HTMLDivElement;
  private readonly typingLine: HTMLParagraphElement;
  private readonly footer: HTMLDivElement;
  private t: Texts;
  private lang: Lang;
  private config: WidgetConfig | undefined;
  private chat: Chat | undefined;
  private unsubscribe: (() => void)[] = [];
  private shown = new Set<string>();
  private mode: Mode = "loading";
  private open = false;
  private unread = 0;
  private agentName: string | undefined;
  private agentSeen = false;
  private wasReconnecting = false;
  private typingSent = 0;
  private typingTimer: ReturnType<typeof setTimeout> | undefined;
  private connTimer: ReturnType<typeof setTimeout> | undefined;
  private visitorReady: Promise<void> | undefined;
  private draft = "";
  private greetingEl: HTMLElement | undefined;

  constructor(host: HTMLElement, opts: WidgetOptions) {
    this.opts = opts;
    this.lang = chooseLanguage(navigator.languages ?? [navigator.language], [], opts.language);
    this.t = texts(this.lang);
    this.sdk = new ChatEngineSDK({
      apiKey: opts.apiKey,
      baseUrl: opts.baseUrl,
      storage: pageStorage(),
      storageKey: `chat-engine:${keyTag(opts.apiKey)}`,
    });
    const shadow = host.attachShadow({ mode: "open" });
    shadow.append(el("style", {}, CSS));
    this.root = el("div", { class: "root", "data-theme": "light", "data-position": "bottom-right" });
    this.launcher = el("button", {
      class: "launcher",
      type: "button",
      "aria-expanded": "false",
      "aria-controls": "ce-panel",
    });
    this.launcher.innerHTML = CHAT_ICON;
    this.badge = el("span", { class: "badge", "aria-hidden": "true" });
    this.badge.hidden = true;
    this.launcher.append(this.badge);
    this.title = el("h2", { id: "ce-title" });
    this.subtitle = el("p", { id: "ce-subtitle" });
    this.logo = el("img", { alt: "" });
    this.logo.hidden = true;
    this.closeBtn = el("button", { class: "icon-btn", type: "button" }, "×");
    this.banner = el("div", { class: "banner", role: "status" });
    this.banner.hidden = true;
    this.conn = el("div", { class: "banner warn", role: "status" });
    this.conn.hidden = true;
    this.log = el("div", { class: "log", role: "log", "aria-live": "polite" });
    this.typingLine = el("p", { class: "typing", "aria-live": "polite" });
    // Focusable, so keyboard users can scroll the history.
    this.body = el("div", { class: "body", tabindex: "0", role: "region" }, this.log, this.typingLine);
    this.footer = el("div", { class: "footer" });
    this.panel = el(
      "section",
      { id: "ce-panel", class: "panel", role: "dialog", "aria-labelledby": "ce-title" },
      el("div", { class: "header" }, this.logo, el("div", { class: "heading" }, this.title, this.subtitle), this.closeBtn),
      this.conn,
      this.banner,
      this.body,
      this.footer,
    );
    this.panel.hidden = true;
    this.root.append(this.panel, this.launcher);
    shadow.append(this.root);

    this.launcher.addEventListener("click", () => this.toggle(!this.open));
    this.closeBtn.addEventListener("click", () => this.toggle(false));
    this.panel.addEventListener("keydown", (e) => {
      if (e.key === "Escape") this.toggle(false);
    });
    this.applyLook();
    this.renderFooter();
    if (opts.open) this.toggle(true);
    void this.start();
  }

  /** Opens or closes the panel; opening clears the unread badge and focuses the first field. */
  toggle(open: boolean): void {
    this.open = open;
    this.panel.hidden = !open;
    this.launcher.setAttribute("aria-expanded", String(open));
    if (open) {
      this.unread = 0;
      this.updateBadge();
      this.scrollDown();
      const first = this.footer.querySelector<HTMLElement>("textarea, input, button");
      (first ?? this.closeBtn).focus();
    } else {
      this.launcher.focus();
    }
  }

  private async start(): Promise<void> {
    try {
      this.config = await this.sdk.getWidgetConfig();
    } catch (e) {
      this.fail(e, () => void this.start());
      return;
    }
    this.lang = chooseLanguage(
      navigator.languages ?? [navigator.language],
      this.config.languages,
      this.opts.language,
    );
    this.t = texts(this.lang);
    this.applyLook();
    const stored = this.sdk.storedChatId();
    if (stored) {
      try {
        await this.ensureVisitor();
        this.attach(await this.sdk.resumeChat(stored));
        return;
      } catch (e) {
        if (e instanceof PermissionDeniedError || e instanceof RateLimitedError) {
          this.fail(e, () => void this.start());
          return;
        }
        // The kept chat is gone (another visitor's, or never stored): start afresh.
        this.sdk.forgetChat();
      }
    }
    this.setMode(this.config.agentsOnline ? "chat" : "offline");
  }

  /** The look from the tenant's branding (defaults until it is known). */
  private applyLook(): void {
    const c = this.config;
    const primary = c?.primaryColor || "#2f6fed";
    this.root.style.setProperty("--primary", primary);
    this.root.style.setProperty("--on-primary", onPrimary(primary, c?.secondaryColor));
    if (c?.fontFamily) this.root.style.setProperty("--font", JSON.stringify(c.fontFamily));
    this.root.dataset.position = c?.position ?? "bottom-right";
    const theme = c?.theme ?? "light";
    const dark =
      theme === "dark" ||
      (theme === "auto" && typeof matchMedia === "function" && matchMedia("(prefers-color-scheme: dark)").matches);
    this.root.dataset.theme = dark ? "dark" : "light";
    if (theme === "auto" && typeof matchMedia === "function") {
      matchMedia("(prefers-color-scheme: dark)").onchange = () => this.applyLook();
    }
    this.root.lang = this.lang;
    this.title.textContent = c?.title || c?.tenantName || this.t.chatWindow;
    if (c?.logoUrl) {
      this.logo.src = c.logoUrl;
      this.logo.hidden = false;
    }
    this.closeBtn.setAttribute("aria-label", this.t.minimise);
    this.log.setAttribute("aria-label", this.t.messages);
    this.body.setAttribute("aria-label", this.t.chatWindow);
    if (this.greetingEl) this.greetingEl.textContent = c?.greeting || this.t.greeting;
    this.updateBadge();
    this.updateSubtitle();
  }

  private updateBadge(): void {
    const n = this.unread;
    this.badge.hidden = n === 0;
    this.badge.textContent = n > 9 ? "9+" : String(n);
    const label = n > 0 ? `${this.t.openChat} (${fmt(this.t.unread, { n })})` : this.t.openChat;
    this.launcher.setAttribute("aria-label", this.open ? this.t.minimise : label);
  }

  private updateSubtitle(): void {
    let s = "";
    if (this.agentName) s = this.agentName;
    else if (this.chat?.status === "queued") s = this.t.waiting;
    this.subtitle.textContent = s;
    this.subtitle.hidden = !s;
  }

  private ensureVisitor(extra: { name?: string; email?: string } = {}): Promise<void> {
    // A name or email from the offline form updates the visitor; otherwise once is enough.
    if (this.visitorReady && !extra.name && !extra.email) return this.visitorReady;
    this.visitorReady = this.sdk
      .initVisitor({
        ...extra,
        pageUrl: location.href.slice(0, 2048),
        referrer: document.referrer.slice(0, 2048),
        language: this.lang,
      })
      .then(() => undefined);
    this.visitorReady.catch(() => {
      this.visitorReady = undefined;
    });
    return this.visitorReady;
  }

  private attach(chat: Chat): void {
    this.detach();
    this.chat = chat;
    this.agentSeen = !!chat.assignedAgentId;
    if (chat.assignedAgentId) this.agentName = chat.assignedAgentName || this.t.anAgent;
    for (const m of chat.messages()) this.addMessage(m, false);
    const off = [
      chat.onMessage((m) => this.addMessage(m, true)),
      chat.onQueueUpdate((q) => {
        // Waiting (again, after a transfer back to the queue): nobody serves the chat now.
        this.agentName = undefined;
        const wait = waitText(this.t, q.estimatedWaitSeconds);
        this.showBanner(
          fmt(this.t.queue, { n: q.position }) + (wait ? ` ${fmt(this.t.wait, { t: wait })}` : ""),
        );
        this.updateSubtitle();
      }),
      chat.onAgentJoined((a) => {
        this.agentSeen = true;
        this.agentName = a.name || this.t.anAgent;
        this.showBanner("");
        this.addNote(fmt(this.t.joined, { name: this.agentName }));
        this.updateSubtitle();
      }),
      chat.onTyping((e) => {
        const who = e.name || this.agentName || this.t.anAgent;
        this.typingLine.textContent = e.typing ? fmt(this.t.typing, { name: who }) : "";
      }),
      chat.onStatusChange((s) => this.connection(s)),
      chat.onEnd(() => {
        this.typingLine.textContent = "";
        this.showBanner("");
        this.addNote(this.t.ended);
        // Nobody ever took the chat (e.g. the workflow's max wait ran out): ask for a
        // message to answer later instead of a rating of nobody.
        this.setMode(this.agentSeen ? "rating" : "offline");
      }),
      chat.onError((e) => this.fail(e)),
    ];
    this.unsubscribe = off;
    if (chat.status === "queued" && chat.queuePosition) {
      this.showBanner(fmt(this.t.queue, { n: chat.queuePosition.position }));
    }
    this.updateSubtitle();
    if (chat.status !== "closed") this.setMode("chat");
  }

  private detach(): void {
    for (const off of this.unsubscribe) off();
    this.unsubscribe = [];
    this.chat?.disconnect();
    this.chat = undefined;
  }

  private connection(s: string): void {
    clearTimeout(this.connTimer);
    if (s === "reconnecting") {
      this.wasReconnecting = true;
      this.conn.textContent = this.t.reconnecting;
      this.conn.hidden = false;
    } else if (s === "connected" && this.wasReconnecting) {
      this.wasReconnecting = false;
      this.conn.textContent = this.t.restored;
      this.conn.hidden = false;
      this.connTimer = setTimeout(() => {
        this.conn.hidden = true;
      }, 4000);
    } else if (s === "connected") {
      this.conn.hidden = true;
    }
  }

  private showBanner(text: string): void {
    this.banner.textContent = text;
    this.banner.hidden = !text;
  }

  private addMessage(m: ChatMessage, live: boolean): void {
    if (this.shown.has(m.id)) return;
    this.shown.add(m.id);
    const who =
      m.senderType === "visitor" ? this.t.you : m.senderType === "agent" ? m.senderName || this.agentName || this.t.agent : this.t.system;
    const li = el("div", { class: `msg ${m.senderType}`, "data-seq": String(m.seq), "data-id": m.id });
    if (m.senderType === "agent" && this.config?.avatarUrl) li.append(el("img", { src: this.config.avatarUrl, alt: "" }));
    const bubble = el("div", { class: "bubble" }, el("span", { class: "sr-only" }, `${who}: `), m.content);
    li.append(bubble);
    // Keep seq order even when a reply overtakes an earlier event.
    const after = [...this.log.querySelectorAll<HTMLElement>("[data-seq]")].find(
      (x) => Number(x.dataset.seq) > m.seq,
    );
    this.log.insertBefore(li, after ?? null);
    if (m.senderType === "agent") this.typingLine.textContent = "";
    if (live && !this.open && m.senderType !== "visitor") {
      this.unread++;
      this.updateBadge();
    }
    this.scrollDown();
  }

  private addNote(text: string): void {
    this.log.append(el("p", { class: "note" }, text));
    this.scrollDown();
  }

  private scrollDown(): void {
    this.body.scrollTop = this.body.scrollHeight;
  }

  private setMode(mode: Mode): void {
    this.mode = mode;
    this.renderFooter();
  }

  /** Shows why there is no chat: origin not allowed, rate limited, or another error. */
  private fail(e: unknown, retry?: () => void): void {
    let text = this.t.error;
    let again: number | undefined = 10_000;
    if (e instanceof PermissionDeniedError) {
      text = this.t.notAllowed;
      again = undefined;
    } else if (e instanceof RateLimitedError) {
      const s = Math.max(1, Math.ceil((e.retryAfterMs || 5000) / 1000));
      text = fmt(this.t.rateLimited, { n: s });
      again = s * 1000;
    } else if (e instanceof UnauthenticatedError) {
      again = undefined;
    }
    this.detach();
    this.showBanner("");
    this.mode = "blocked";
    this.footer.replaceChildren(el("p", { class: "notice", role: "alert" }, text));
    if (retry && again !== undefined) setTimeout(retry, again);
  }

  private renderFooter(): void {
    const f = this.footer;
    switch (this.mode) {
      case "loading":
        f.replaceChildren();
        break;
      case "chat":
        f.replaceChildren(this.composer());
        break;
      case "offline":
        f.replaceChildren(this.offlineForm());
        break;
      case "rating":
        f.replaceChildren(this.ratingForm());
        break;
      case "rated":
        f.replaceChildren(this.afterRating());
        break;
      case "blocked":
        break;
    }
    if (this.mode !== "blocked" && this.log.childElementCount === 0) {
      this.greetingEl = el("p", { class: "greeting" }, this.config?.greeting || this.t.greeting);
      this.log.append(this.greetingEl);
    }
    if (this.open) {
      const first = f.querySelector<HTMLElement>("textarea, input");
      first?.focus();
    }
  }

  private composer(): HTMLElement {
    const input = el("textarea", {
      id: "ce-input",
      rows: "1",
      maxlength: "8000",
      placeholder: this.t.inputPlaceholder,
      "aria-label": this.t.inputLabel,
    });
    input.value = this.draft;
    const send = el("button", { class: "btn", type: "submit" }, this.t.send);
    const error = el("p", { class: "error", role: "alert" });
    error.hidden = true;
    const form = el("form", { class: "composer-form" });
    const end = el("button", { class: "btn secondary", type: "button" }, this.t.endChat);
    end.hidden = !this.chat;
    end.addEventListener("click", () => {
      end.disabled = true;
      this.chat?.end().catch((e) => {
        end.disabled = false;
        this.showError(error, e);
      });
    });
    form.append(el("div", { class: "composer" }, input, send), error, el("div", { class: "row" }, end));
    input.addEventListener("input", () => {
      this.draft = input.value;
      this.typing(input.value.trim().length > 0);
    });
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        form.requestSubmit();
      }
    });
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const text = input.value.trim();
      if (!text) return;
      send.disabled = true;
      error.hidden = true;
      this.send(text)
        .then(() => {
          input.value = "";
          this.draft = "";
          end.hidden = !this.chat;
        })
        .catch((err) => this.showError(error, err))
        .finally(() => {
          send.disabled = false;
          input.focus();
        });
    });
    return form;
  }

  private showError(target: HTMLElement, e: unknown): void {
    if (e instanceof PermissionDeniedError) return this.fail(e);
    target.textContent =
      e instanceof RateLimitedError
        ? fmt(this.t.rateLimited, { n: Math.max(1, Math.ceil((e.retryAfterMs || 5000) / 1000)) })
        : this.t.error;
    target.hidden = false;
  }

  private async send(text: string): Promise<void> {
    this.typing(false);
    if (this.chat && this.chat.status !== "closed") {
      await this.chat.sendMessage({ content: text });
      return;
    }
    await this.ensureVisitor();
    this.attach(await this.sdk.startChat({ initialMessage: text }));
  }

  /** Tells the agent about typing: at most every few seconds while typing, and once when it stops. */
  private typing(on: boolean): void {
    const chat = this.chat;
    if (!chat || chat.status === "closed") return;
    clearTimeout(this.typingTimer);
    const now = Date.now();
    if (on) {
      if (now - this.typingSent > TYPING_REPEAT_MS) {
        this.typingSent = now;
        chat.setTyping(true).catch(() => undefined);
      }
      this.typingTimer = setTimeout(() => this.typing(false), TYPING_IDLE_MS);
    } else if (this.typingSent) {
      this.typingSent = 0;
      chat.setTyping(false).catch(() => undefined);
    }
  }

  private offlineForm(): HTMLElement {
    const t = this.t;
    const name = el("input", { type: "text", name: "name", autocomplete: "name", maxlength: "200" });
    const email = el("input", { type: "email", name: "email", autocomplete: "email", required: "", maxlength: "320" });
    const message = el("textarea", { name: "message", rows: "3", required: "", maxlength: "8000" });
    const error = el("p", { class: "error", role: "alert" });
    error.hidden = true;
    const submit = el("button", { class: "btn", type: "submit" }, t.sendOffline);
    const form = el(
      "form",
      { class: "stack offline", "aria-labelledby": "ce-offline-title", novalidate: "" },
      el("h3", { id: "ce-offline-title" }, t.offlineTitle),
      el("p", {}, t.offlineText),
      el("label", {}, t.name, name),
      el("label", {}, t.email, email),
      el("label", {}, t.message, message),
      error,
      submit,
    );
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const text = message.value.trim();
      const mail = email.value.trim();
      error.hidden = true;
      if (!EMAIL.test(mail)) {
        error.textContent = t.emailInvalid;
        error.hidden = false;
        email.setAttribute("aria-invalid", "true");
        email.focus();
        return;
      }
      if (!text) {
        error.textContent = t.messageRequired;
        error.hidden = false;
        message.focus();
        return;
      }
      submit.disabled = true;
      this.ensureVisitor({ name: name.value.trim(), email: mail })
        .then(() => this.sdk.startChat({ initialMessage: text }))
        .then((chat) => {
          this.attach(chat);
          this.addNote(t.offlineSent);
        })
        .catch((err) => {
          submit.disabled = false;
          this.showError(error, err);
        });
    });
    return form;
  }

  private ratingForm(): HTMLElement {
    const t = this.t;
    const stars = el("div", { class: "stars" });
    for (let n = 1; n <= 5; n++) {
      const input = el("input", { type: "radio", name: "score", value: String(n), "aria-label": fmt(t.rateScore, { n }) });
      stars.append(el("label", {}, input, el("span", { "aria-hidden": "true" }, "★")));
    }
    const comment = el("textarea", { name: "comment", rows: "2", maxlength: "2000" });
    const error = el("p", { class: "error", role: "alert" });
    error.hidden = true;
    const submit = el("button", { class: "btn", type: "submit" }, t.sendRating);
    const form = el(
      "form",
      { class: "stack rating" },
      el("fieldset", {}, el("legend", {}, t.rateQuestion), stars),
      el("label", {}, t.comment, comment),
      error,
      el("div", { class: "row" }, submit, this.newChatButton()),
    );
    stars.addEventListener("change", () => {
      const v = Number(new FormData(form).get("score") ?? 0);
      stars.querySelectorAll("label").forEach((l, i) => l.classList.toggle("on", i < v));
    });
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const score = Number(new FormData(form).get("score") ?? 0);
      if (!score || !this.chat) return;
      submit.disabled = true;
      this.chat
        .rate(score, comment.value.trim())
        .then(() => this.setMode("rated"))
        .catch((err) => {
          submit.disabled = false;
          this.showError(error, err);
        });
    });
    return form;
  }

  private afterRating(): HTMLElement {
    return el(
      "div",
      { class: "stack" },
      el("p", { class: "notice", role: "status" }, this.t.thanksRating),
      this.newChatButton(),
    );
  }

  private newChatButton(): HTMLButtonElement {
    const b = el("button", { class: "btn secondary", type: "button" }, this.t.newChat);
    b.addEventListener("click", () => {
      this.detach();
      this.sdk.forgetChat();
      this.shown.clear();
      this.log.replaceChildren();
      this.agentName = undefined;
      this.agentSeen = false;
      this.showBanner("");
      this.updateSubtitle();
      this.setMode(this.config?.agentsOnline === false ? "offline" : "chat");
    });
    return b;
  }
}
