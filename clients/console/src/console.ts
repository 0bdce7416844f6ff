// The agent console served at /console: log in, the live queue and the agent's own chats,
// accept, reply (with typing and read marks), transfer, close, and the agent's status; all on
// the agent facade of @chat-engine/sdk over gRPC-web to the server the page came from.

import {
  ChatEngineAgent,
  type AgentStatusName,
  type ChatMessage,
  type ConversationInfo,
  type QueueSnapshot,
} from "@chat-engine/sdk/agent";

const TYPING_IDLE_MS = 4000;
const TYPING_REPEAT_MS = 3000;

function $<T extends HTMLElement>(id: string): T {
  const e = document.getElementById(id);
  if (!e) throw new Error(`console: #${id} is missing`);
  return e as T;
}

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
  e.append(...children);
  return e;
}

interface Conv {
  info: ConversationInfo;
  visitorName: string;
  unread: number;
  messages: Map<string, ChatMessage>;
  loaded: boolean;
  readSeq: number;
}

class Console {
  private agent: ChatEngineAgent;
  private convs = new Map<string, Conv>();
  private names = new Map<string, string>();
  private selected: string | undefined;
  private queue: QueueSnapshot | undefined;
  private typingSent = 0;
  private typingTimer: ReturnType<typeof setTimeout> | undefined;
  private stops: (() => void)[] = [];

  constructor(agent: ChatEngineAgent) {
    this.agent = agent;
  }

  async start(): Promise<void> {
    const me = this.agent.me;
    $("me").textContent = `${me.displayName || me.email}`;
    $<HTMLSelectElement>("status").value = me.status;
    $("login").hidden = true;
    $("app").hidden = false;
    for (const a of await this.agent.listAgents().catch(() => [])) this.names.set(a.id, a.displayName);
    this.bind();
    await this.refreshList();
    const sub = this.agent.subscribe({
      onMessage: (m) => this.onMessage(m),
      onTyping: (t) => {
        if (t.conversationId !== this.selected || t.senderType !== "visitor") return;
        $("typing").textContent = t.typing ? `${this.conv(t.conversationId)?.visitorName ?? "Visitor"} is typing…` : "";
      },
      onStatusChanged: (e) => {
        const c = this.convs.get(e.conversationId);
        if (c) {
          c.info = { ...c.info, status: e.status, assignedAgentId: e.assignedAgentId };
          this.renderList();
          if (e.conversationId === this.selected) this.renderHead();
        } else if (e.assignedAgentId === this.agent.me.id) {
          void this.refreshList();
        }
      },
      onJoined: (e) => {
        if (e.visitor) this.names.set(e.visitor.id, e.visitor.name || e.visitor.email);
        this.upsert(e.conversation, e.visitor?.name || e.visitor?.email);
        this.renderList();
      },
      onConnectionStatus: (s) => {
        $("conn").textContent = s === "reconnecting" ? "Connection lost, reconnecting…" : s === "connected" ? "Connected" : "";
      },
      onError: (e) => this.showError(e.message),
    });
    this.stops.push(() => sub.unsubscribe());
    this.stops.push(
      this.agent.watchQueue((q) => {
        this.queue = q;
        this.renderQueue();
      }),
    );
  }

  private bind(): void {
    $<HTMLSelectElement>("status").addEventListener("change", (e) => {
      const v = (e.target as HTMLSelectElement).value as AgentStatusName;
      this.agent.setStatus(v).catch((err) => this.showError(String(err?.message ?? err)));
    });
    $("logout").addEventListener("click", () => {
      for (const s of this.stops) s();
      void this.agent.logout().finally(() => location.reload());
    });
    const reply = $<HTMLTextAreaElement>("reply");
    reply.addEventListener("input", () => this.typing(reply.value.trim().length > 0));
    reply.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        $<HTMLFormElement>("composer").requestSubmit();
      }
    });
    $("composer").addEventListener("submit", (e) => {
      e.preventDefault();
      const id = this.selected;
      const text = reply.value.trim();
      if (!id || !text) return;
      this.typing(false);
      this.agent
        .send(id, text)
        .then((m) => {
          reply.value = "";
          this.onMessage(m);
        })
        .catch((err) => this.showError(String(err?.message ?? err)));
    });
    $("close").addEventListener("click", () => {
      if (!this.selected) return;
      this.agent.close(this.selected).catch((err) => this.showError(String(err?.message ?? err)));
    });
    $("transfer").addEventListener("click", () => {
      const id = this.selected;
      const to = $<HTMLSelectElement>("transfer-to").value;
      if (!id || !to) return;
      const target = to.startsWith("skill:") ? { skill: to.slice(6) } : { agentId: to };
      this.agent
        .transfer(id, target)
        .then(() => void this.refreshList())
        .catch((err) => this.showError(String(err?.message ?? err)));
    });
    window.addEventListener("focus", () => this.markRead());
  }

  private conv(id: string): Conv | undefined {
    return this.convs.get(id);
  }

  private upsert(info: ConversationInfo, visitorName?: string): Conv {
    let c = this.convs.get(info.id);
    if (!c) {
      c = { info, visitorName: "", unread: 0, messages: new Map(), loaded: false, readSeq: 0 };
      this.convs.set(info.id, c);
    } else {
      c.info = info;
    }
    const name = visitorName || (info.visitorId ? this.names.get(info.visitorId) : undefined);
    if (name) c.visitorName = name;
    if (!c.visitorName) c.visitorName = info.kind === "external" ? "Visitor" : info.title || "Conversation";
    return c;
  }

  private async refreshList(): Promise<void> {
    const page = await this.agent.listConversations({ pageSize: 50 });
    for (const item of page.conversations) {
      const c = this.upsert(item.conversation);
      c.unread = item.unreadCount;
      c.readSeq = item.readSeq;
    }
    this.renderList();
  }

  private renderList(): void {
    const ul = $("mine");
    const items = [...this.convs.values()].sort(
      (a, b) => b.info.lastActivityAt.getTime() - a.info.lastActivityAt.getTime(),
    );
    ul.replaceChildren(
      ...items.map((c) => {
        const b = el(
          "button",
          { class: "item", type: "button", "data-conversation": c.info.id },
          el("span", { class: "name" }, c.visitorName),
          el("span", { class: "meta" }, c.info.status),
        );
        if (c.unread > 0) b.append(el("span", { class: "unread", "aria-label": `${c.unread} unread` }, String(c.unread)));
        if (c.info.id === this.selected) b.setAttribute("aria-current", "true");
        b.addEventListener("click", () => void this.select(c.info.id));
        return el("li", {}, b);
      }),
    );
    $("mine-empty").hidden = items.length > 0;
  }

  private renderQueue(): void {
    const q = this.queue;
    const ul = $("queue");
    const chats = q?.chats ?? [];
    ul.replaceChildren(
      ...chats.map((w) => {
        const accept = el("button", { type: "button", class: "primary" }, "Accept");
        const name = w.visitorName || "Visitor";
        accept.setAttribute("aria-label", `Accept chat with ${name}`);
        accept.addEventListener("click", () => {
          accept.disabled = true;
          this.agent
            .accept(w.conversation.id)
            .then(async (info) => {
              this.upsert(info, name);
              await this.refreshList();
              await this.select(info.id);
            })
            .catch((err) => {
              accept.disabled = false;
              this.showError(String(err?.message ?? err));
            });
        });
        return el(
          "li",
          { class: "queue-item", "data-conversation": w.conversation.id },
          el("span", { class: "name" }, `${w.position}. ${name}`),
          accept,
        );
      }),
    );
    $("queue-empty").hidden = chats.length > 0;
    $("queue-title").textContent = `Queue (${q?.total ?? 0})`;
    const sel = $<HTMLSelectElement>("transfer-to");
    const keep = sel.value;
    const others = (q?.agents ?? []).filter((a) => a.agentId !== this.agent.me.id);
    sel.replaceChildren(
      el("option", { value: "" }, "Choose…"),
      ...others.map((a) => el("option", { value: a.agentId }, `${a.displayName} (${a.status})`)),
      ...["billing", "technical"].map((s) => el("option", { value: `skill:${s}` }, `Queue: skill ${s}`)),
    );
    sel.value = keep;
  }

  private async select(id: string): Promise<void> {
    this.selected = id;
    const c = this.convs.get(id);
    if (!c) return;
    if (!c.loaded) {
      for (const m of await this.agent.listMessages(id, { limit: 200 })) c.messages.set(m.id, m);
      c.loaded = true;
    }
    $("placeholder").hidden = true;
    $("chat-head").hidden = false;
    $("messages").hidden = false;
    $("composer").hidden = false;
    $("typing").textContent = "";
    this.renderHead();
    this.renderMessages();
    this.renderList();
    this.markRead();
    $("reply").focus();
  }

  private renderHead(): void {
    const c = this.selected ? this.convs.get(this.selected) : undefined;
    if (!c) return;
    $("chat-title").textContent = c.visitorName;
    $("chat-status").textContent = c.info.status;
    const closed = c.info.status === "closed";
    $<HTMLButtonElement>("close").disabled = closed;
    $<HTMLButtonElement>("transfer").disabled = closed;
    $<HTMLTextAreaElement>("reply").disabled = closed;
  }

  private renderMessages(): void {
    const c = this.selected ? this.convs.get(this.selected) : undefined;
    if (!c) return;
    const list = [...c.messages.values()].sort((a, b) => a.seq - b.seq);
    $("messages").replaceChildren(
      ...list.map((m) => {
        const who =
          m.senderType === "agent"
            ? m.senderId === this.agent.me.id
              ? "You"
              : m.senderName || this.names.get(m.senderId ?? "") || "Agent"
            : m.senderType === "visitor"
              ? c.visitorName
              : "System";
        return el(
          "div",
          { class: `msg ${m.senderType}`, "data-seq": String(m.seq) },
          el("span", { class: "who" }, who),
          m.content,
        );
      }),
    );
    const box = $("messages");
    box.scrollTop = box.scrollHeight;
  }

  private onMessage(m: ChatMessage): void {
    let c = this.convs.get(m.conversationId);
    if (!c) {
      void this.refreshList();
      return;
    }
    if (c.messages.has(m.id)) return;
    c.messages.set(m.id, m);
    c.info = { ...c.info, lastActivityAt: m.sentAt, lastSeq: Math.max(c.info.lastSeq, m.seq) };
    if (m.conversationId === this.selected) {
      if (m.senderType === "visitor") $("typing").textContent = "";
      this.renderMessages();
      this.markRead();
    } else if (m.senderId !== this.agent.me.id) {
      c.unread++;
    }
    this.renderList();
  }

  /** Marks what the agent sees as read, so the visitor's side gets a receipt. */
  private markRead(): void {
    const c = this.selected ? this.convs.get(this.selected) : undefined;
    if (!c || !document.hasFocus()) return;
    const last = Math.max(0, ...[...c.messages.values()].map((m) => m.seq));
    if (last <= c.readSeq) return;
    c.readSeq = last;
    c.unread = 0;
    this.agent.markRead(c.info.id, last).catch(() => undefined);
  }

  private typing(on: boolean): void {
    const id = this.selected;
    if (!id) return;
    clearTimeout(this.typingTimer);
    const now = Date.now();
    if (on) {
      if (now - this.typingSent > TYPING_REPEAT_MS) {
        this.typingSent = now;
        this.agent.setTyping(id, true).catch(() => undefined);
      }
      this.typingTimer = setTimeout(() => this.typing(false), TYPING_IDLE_MS);
    } else if (this.typingSent) {
      this.typingSent = 0;
      this.agent.setTyping(id, false).catch(() => undefined);
    }
  }

  private showError(text: string): void {
    const e = $("chat-error");
    e.textContent = text;
    e.hidden = false;
    setTimeout(() => {
      e.hidden = true;
    }, 6000);
  }
}

$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  const err = $("login-error");
  err.hidden = true;
  ChatEngineAgent.login({
    baseUrl: location.origin,
    tenantSlug: $<HTMLInputElement>("tenant").value.trim(),
    email: $<HTMLInputElement>("email").value.trim(),
    password: $<HTMLInputElement>("password").value,
  })
    .then((agent) => new Console(agent).start())
    .catch((e2) => {
      err.textContent = String(e2?.message ?? e2);
      err.hidden = false;
    });
});
