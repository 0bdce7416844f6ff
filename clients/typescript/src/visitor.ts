/**
 * The visitor facade: what a website's chat widget needs, over VisitorService. A
 * {@link ChatEngineSDK} holds the widget key and the visitor's token; a {@link Chat} holds
 * one conversation's history and its resuming event stream.
 *
 * @module
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { createClient, type CallOptions, type Client } from "@connectrpc/connect";
import { Backoff, sleep, type BackoffOptions } from "./backoff.js";
import {
  chatStatusOf,
  chatSummaryOf,
  dateOf,
  messageOf,
  visitorTypeOf,
  widgetConfigOf,
} from "./convert.js";
import { ChatEngineError, InvalidArgumentError, toChatEngineError } from "./errors.js";
import { MessageType as PbMessageType } from "./gen/chatengine/v1/common_pb.js";
import { ConversationStatus, ListDirection, type StreamItem } from "./gen/chatengine/v1/conversation_pb.js";
import { VisitorService, type InitVisitorRequestSchema, type QueueStatus } from "./gen/chatengine/v1/visitor_pb.js";

type InitRequest = MessageInitShape<typeof InitVisitorRequestSchema>;
import { Listeners, Reconnector, SeqCursors, onNetworkBack, pumpItems } from "./stream.js";
import { makeTransport, type ConnectionOptions } from "./transport.js";
import type {
  AgentJoinedEvent,
  ChatEndEvent,
  ChatMessage,
  ChatStatus,
  ConnectionStatus,
  MessageType,
  QueueUpdate,
  Rating,
  TypingEvent,
  Unsubscribe,
  VisitorSession,
  WidgetConfig,
} from "./types.js";
import { newRequestId, newSessionId } from "./ids.js";

/** The part of the Web Storage API the SDK uses (localStorage fits). */
export interface StorageLike {
  /** Returns the stored value or null. */
  getItem(key: string): string | null;
  /** Stores a value. */
  setItem(key: string, value: string): void;
  /** Forgets a value. */
  removeItem(key: string): void;
}

/** Options of {@link ChatEngineSDK}. */
export interface ChatEngineSDKOptions extends ConnectionOptions {
  /** The tenant's widget key (sent as `x-api-key`). */
  apiKey: string;
  /** The tenant id the widget was configured with; checked by the server when set. */
  tenantId?: string;
  /**
   * Where to keep the session id and the open chat's id, so a page reload resumes the same
   * visitor and chat (e.g. `localStorage`). Without it nothing is kept.
   */
  storage?: StorageLike;
  /** Prefix of the storage keys (default `"chat-engine"`). */
  storageKey?: string;
  /** Reconnect delays of the chat streams and send retries. */
  backoff?: BackoffOptions;
  /** How long a send keeps retrying transient failures before it fails (default 30 000 ms). */
  sendRetryMs?: number;
}

/** What {@link ChatEngineSDK.initVisitor} takes. */
export interface InitVisitorOptions {
  /** Visitor's name. */
  name?: string;
  /** Visitor's email. */
  email?: string;
  /**
   * The widget session id, 16-128 characters of A-Z a-z 0-9 - _: the same id is the same
   * visitor. Default: the one in `storage`, else a new random one (kept in `storage`).
   */
  sessionId?: string;
  /** URL of the page the visitor is on. */
  pageUrl?: string;
  /** Referrer of that page. */
  referrer?: string;
  /** Preferred language (BCP 47). */
  language?: string;
  /** Country (ISO 3166-1 alpha-2). */
  country?: string;
  /** Tenant-defined attributes for routing conditions. */
  attributes?: Record<string, string>;
  /** The tenant's id for a logged-in user (with {@link identityProof}). */
  externalUserId?: string;
  /** Hex HMAC-SHA256 of externalUserId with the tenant's identity secret, made by the tenant's server. */
  identityProof?: string;
}

/** What {@link ChatEngineSDK.startChat} takes. */
export interface StartChatOptions {
  /** The visitor from initVisitor (checked: the chat is always the token's visitor's). */
  visitorId?: string;
  /** First message, optional. */
  initialMessage?: string;
  /** Makes the start idempotent; default a new random id. */
  requestId?: string;
}

/** What {@link Chat.sendMessage} takes. */
export interface SendMessageOptions {
  /** Text, 1-8000 characters after trimming. */
  content: string;
  /** Kind of content (default and only: text). */
  type?: MessageType;
  /** The send's idempotency id; default a new random id, kept across the SDK's own retries. */
  requestId?: string;
}

/** A read position of the agent moved (for "seen" marks). */
export interface ReadReceiptEvent {
  /** The reader (an agent). */
  readerId: string;
  /** Their new read position: every message up to this seq is read. */
  readSeq: number;
}

const RENEW_BEFORE_MS = 5 * 60 * 1000;

/** The visitor side of chat-engine: one widget key, one visitor, their chats. */
export class ChatEngineSDK {
  private readonly options: ChatEngineSDKOptions;
  private readonly client: Client<typeof VisitorService>;
  private visitorNow: VisitorSession | undefined;
  private initRequest: InitRequest | undefined;
  private renewing: Promise<void> | undefined;

  /** Makes an SDK for one widget key; no call is made until you call a method. */
  constructor(options: ChatEngineSDKOptions) {
    if (!options?.apiKey) throw new TypeError("chat-engine: apiKey is required");
    this.options = options;
    this.client = createClient(VisitorService, makeTransport(options));
  }

  /** The visitor after initVisitor, if any. */
  get visitor(): VisitorSession | undefined {
    return this.visitorNow;
  }

  /** The chat id kept in `storage` by startChat (to pass to resumeChat after a reload). */
  storedChatId(): string | undefined {
    return this.options.storage?.getItem(this.key("chat")) ?? undefined;
  }

  /** Forgets the kept chat id (e.g. after the survey of an ended chat). */
  forgetChat(): void {
    this.options.storage?.removeItem(this.key("chat"));
  }

  /** The tenant's widget branding and settings, and whether agents are online. */
  async getWidgetConfig(): Promise<WidgetConfig> {
    const r = await this.call((o) => this.client.getWidgetConfig({}, o), false);
    return widgetConfigOf(r);
  }

  /**
   * Creates or resumes the visitor of this widget session and keeps their token for the
   * later calls (renewed by itself before it expires).
   */
  async initVisitor(opts: InitVisitorOptions = {}): Promise<VisitorSession> {
    const storage = this.options.storage;
    const sessionId = opts.sessionId ?? storage?.getItem(this.key("session")) ?? newSessionId();
    const req: InitRequest = {
      tenantId: this.options.tenantId ?? "",
      sessionId,
      name: opts.name ?? "",
      email: opts.email ?? "",
      pageUrl: opts.pageUrl ?? "",
      referrer: opts.referrer ?? "",
      language: opts.language ?? "",
      country: opts.country ?? "",
      attributes: { ...(opts.attributes ?? {}) },
    };
    if (opts.externalUserId !== undefined || opts.identityProof !== undefined) {
      req.identity = {
        externalUserId: opts.externalUserId ?? "",
        proof: opts.identityProof ?? "",
      };
    }
    const session = await this.runInit(req);
    this.initRequest = req;
    storage?.setItem(this.key("session"), sessionId);
    return session;
  }

  /**
   * Starts a chat (queued for an agent by the tenant's workflows), or returns the visitor's
   * chat that has not ended yet. Its stream opens right away.
   */
  async startChat(opts: StartChatOptions = {}): Promise<Chat> {
    const v = this.requireVisitor();
    if (opts.visitorId && opts.visitorId !== v.id) {
      throw new InvalidArgumentError("visitorId is not the visitor of this SDK", [
        { field: "visitorId", description: "must be the id initVisitor returned" },
      ]);
    }
    const requestId = opts.requestId ?? newRequestId();
    const r = await this.call((o) =>
      this.client.startChat({ initialMessage: opts.initialMessage ?? "", requestId }, o),
    );
    const conv = r.conversation;
    if (!conv) throw new ChatEngineError("internal", "StartChat answered no conversation");
    this.options.storage?.setItem(this.key("chat"), conv.id);
    const history = r.initialMessage ? [messageOf(r.initialMessage)] : [];
    // A new chat is followed from its first event, so the welcome and queue messages that
    // the server posts with it arrive on the stream; so does its assignment, also when an
    // available agent took it before this answer: that agent is told to onAgentJoined
    // when the stream replays it, not taken from the answer (which would silence it).
    return new Chat(this, conv.id, {
      status: chatStatusOf(conv.status),
      assignedAgentId: undefined,
      assignedAgentName: undefined,
      history,
      cursor: 0,
      queue: queueOf(r.queueStatus),
    });
  }

  /**
   * Opens one of the visitor's chats again, e.g. after a page reload: its history so far,
   * then its stream from there. Needs initVisitor first (with the same session id).
   */
  async resumeChat(conversationId: string): Promise<Chat> {
    this.requireVisitor();
    // History first, then the status: a change after the history's last message has a higher
    // seq, so the stream replays it; one before it is in the status read after.
    const history = await this.history(conversationId);
    const status = await this.call((o) => this.client.getQueueStatus({ conversationId }, o));
    const qs = status.queueStatus;
    const cursor = history.length ? history[history.length - 1].seq : 0;
    return new Chat(this, conversationId, {
      status: qs ? chatStatusOf(qs.status) : "open",
      assignedAgentId: qs?.assignedAgentId || undefined,
      assignedAgentName: qs?.assignedAgentName || undefined,
      history,
      cursor,
      queue: queueOf(qs),
    });
  }

  /** Every message of one of the visitor's chats, oldest first. */
  async history(conversationId: string): Promise<ChatMessage[]> {
    const out: ChatMessage[] = [];
    let anchor = 0;
    for (;;) {
      const page = await this.call((o) =>
        this.client.listVisitorMessages(
          { conversationId, direction: ListDirection.FORWARD, anchorSeq: anchor, pageSize: 200 },
          o,
        ),
      );
      for (const m of page.messages) out.push(messageOf(m));
      if (!page.messages.length || !page.nextPageToken) return out;
      anchor = page.messages[page.messages.length - 1].seq;
    }
  }

  /** @internal The generated client, for {@link Chat}. */
  get rpc(): Client<typeof VisitorService> {
    return this.client;
  }

  /** @internal Reconnect delays, for {@link Chat}. */
  get backoffOptions(): BackoffOptions | undefined {
    return this.options.backoff;
  }

  /** @internal How long sends retry, for {@link Chat}. */
  get sendRetryMs(): number {
    return this.options.sendRetryMs ?? 30_000;
  }

  /**
   * @internal Runs one call with the widget key (and the visitor token when `visitor`),
   * renewing the token first when it is about to expire, and maps its error.
   */
  async call<T>(fn: (o: CallOptions) => Promise<T>, visitor = true, signal?: AbortSignal): Promise<T> {
    try {
      if (visitor) await this.freshToken();
      return await fn(this.callOptions(visitor, signal));
    } catch (e) {
      throw toChatEngineError(e);
    }
  }

  /** @internal Call options carrying the credentials. */
  callOptions(visitor: boolean, signal?: AbortSignal): CallOptions {
    const headers: Record<string, string> = { "x-api-key": this.options.apiKey };
    if (visitor) headers.authorization = `Bearer ${this.requireVisitor().token}`;
    return { headers, signal };
  }

  /** @internal Gets a new visitor token with the same session (after UNAUTHENTICATED or near expiry). */
  renewToken(): Promise<void> {
    if (!this.initRequest) return Promise.reject(new ChatEngineError("failed_precondition", "call initVisitor first"));
    const req = this.initRequest;
    this.renewing ??= this.runInit(req)
      .then(() => undefined)
      .finally(() => {
        this.renewing = undefined;
      });
    return this.renewing;
  }

  /** @internal Renews the visitor token first when it is about to expire. */
  async freshToken(): Promise<void> {
    const v = this.requireVisitor();
    if (v.tokenExpiresAt.getTime() - Date.now() < RENEW_BEFORE_MS) await this.renewToken();
  }

  private async runInit(req: InitRequest): Promise<VisitorSession> {
    const r = await this.call((o) => this.client.initVisitor(req, o), false);
    const v = r.visitor;
    if (!v) throw new ChatEngineError("internal", "InitVisitor answered no visitor");
    const session: VisitorSession = {
      id: v.id,
      token: r.visitorToken,
      tokenExpiresAt: dateOf(r.visitorTokenExpireTime),
      type: visitorTypeOf(v.visitorType),
      sessionId: req.sessionId ?? "",
      name: v.name,
      email: v.email,
      chats: r.conversations.map(chatSummaryOf),
    };
    if (v.externalUserId) session.externalUserId = v.externalUserId;
    this.visitorNow = session;
    return session;
  }

  private requireVisitor(): VisitorSession {
    if (!this.visitorNow) throw new ChatEngineError("failed_precondition", "call initVisitor first");
    return this.visitorNow;
  }

  private key(what: string): string {
    return `${this.options.storageKey ?? "chat-engine"}:${what}`;
  }
}

function queueOf(qs: QueueStatus | undefined): QueueUpdate | undefined {
  if (!qs || qs.status !== ConversationStatus.QUEUED || qs.position === 0) return undefined;
  return { position: qs.position, estimatedWaitSeconds: qs.estimatedWaitSeconds };
}

interface ChatState {
  status: ChatStatus;
  assignedAgentId: string | undefined;
  assignedAgentName: string | undefined;
  history: ChatMessage[];
  cursor: number;
  queue: QueueUpdate | undefined;
}

/**
 * One visitor chat: its history, its live events (each message once, in seq order, across
 * reconnects), and the visitor's actions in it.
 */
export class Chat {
  /** The chat's conversation id. */
  readonly id: string;
  private readonly sdk: ChatEngineSDK;
  private readonly byId = new Map<string, ChatMessage>();
  private readonly seqs = new Set<number>();
  private readonly ordered: ChatMessage[] = [];
  private readonly cursors: SeqCursors;
  private readonly stream: Reconnector;
  private statusNow: ChatStatus;
  private agentNow: string | undefined;
  /** Agents' display names as the server told them (on assignment), by id. */
  private readonly names = new Map<string, string>();
  private queueNow: QueueUpdate | undefined;
  private endEvent: ChatEndEvent | undefined;
  private readonly messageListeners = new Listeners<ChatMessage>();
  private readonly queueListeners = new Listeners<QueueUpdate>();
  private readonly typingListeners = new Listeners<TypingEvent>();
  private readonly agentListeners = new Listeners<AgentJoinedEvent>();
  private readonly statusListeners = new Listeners<ConnectionStatus>();
  private readonly endListeners = new Listeners<ChatEndEvent>();
  private readonly receiptListeners = new Listeners<ReadReceiptEvent>();
  private readonly errorListeners = new Listeners<ChatEngineError>();

  /** @internal Made by {@link ChatEngineSDK.startChat} and {@link ChatEngineSDK.resumeChat}. */
  constructor(sdk: ChatEngineSDK, id: string, state: ChatState) {
    this.sdk = sdk;
    this.id = id;
    this.statusNow = state.status;
    this.agentNow = state.assignedAgentId;
    if (state.assignedAgentId && state.assignedAgentName) this.names.set(state.assignedAgentId, state.assignedAgentName);
    this.queueNow = state.queue;
    for (const m of state.history) {
      const name = m.senderId && !m.senderName ? this.names.get(m.senderId) : undefined;
      this.remember(name ? { ...m, senderName: name } : m);
    }
    if (state.status === "closed") {
      const last = state.history[state.history.length - 1];
      this.endEvent = { conversationId: id, seq: state.cursor, endedAt: last?.sentAt ?? new Date() };
    }
    this.cursors = new SeqCursors([[id, state.cursor]]);
    this.stream = new Reconnector({
      backoff: sdk.backoffOptions,
      attempt: (signal, connected) => this.attempt(signal, connected),
      onStatus: (s) => this.statusListeners.emit(s),
      onFatal: (err) => this.errorListeners.emit(err),
      renewCredentials: () => sdk.renewToken(),
    });
    // Start after the caller's continuation has run (a macrotask, not a microtask), so the
    // handlers it registers right after `await startChat()` see the first items.
    setTimeout(() => {
      const offNet = onNetworkBack(() => this.stream.kick());
      void this.stream.start().finally(offNet);
    }, 0);
  }

  /** The chat's status: queued, open (served) or closed. */
  get status(): ChatStatus {
    return this.statusNow;
  }

  /** The agent serving the chat, if any. */
  get assignedAgentId(): string | undefined {
    return this.agentNow;
  }

  /** The display name of the agent serving the chat, if known. */
  get assignedAgentName(): string | undefined {
    return this.agentNow ? this.names.get(this.agentNow) : undefined;
  }

  /** The last queue position while waiting, if known. */
  get queuePosition(): QueueUpdate | undefined {
    return this.queueNow;
  }

  /** The stream's state. */
  get connectionStatus(): ConnectionStatus {
    return this.stream.status;
  }

  /** Every message so far, in seq order (a copy). */
  messages(): ChatMessage[] {
    return [...this.ordered];
  }

  /**
   * Each new message (the agent's, the system's and the visitor's own), once. They come in
   * seq order, except that the visitor's own message is told as soon as its send is answered,
   * which may be before an earlier message of the agent arrives; {@link messages} is always in
   * seq order.
   */
  onMessage(cb: (msg: ChatMessage) => void): Unsubscribe {
    return this.messageListeners.add(cb);
  }

  /**
   * Queue position and estimated wait while waiting, on every change; called at once with the
   * last one known.
   */
  onQueueUpdate(cb: (q: QueueUpdate) => void): Unsubscribe {
    const off = this.queueListeners.add(cb);
    const q = this.queueNow;
    if (q && this.statusNow === "queued") {
      setTimeout(() => {
        if (this.queueNow === q) cb(q);
      }, 0);
    }
    return off;
  }

  /** The agent started or stopped typing. */
  onTyping(cb: (t: TypingEvent) => void): Unsubscribe {
    return this.typingListeners.add(cb);
  }

  /** An agent took the chat (also on a transfer to another agent). */
  onAgentJoined(cb: (a: AgentJoinedEvent) => void): Unsubscribe {
    return this.agentListeners.add(cb);
  }

  /** The stream's state changed (connection lost / restored). */
  onStatusChange(cb: (s: ConnectionStatus) => void): Unsubscribe {
    return this.statusListeners.add(cb);
  }

  /** The chat ended, by either side: time for the survey. Called at once if it has ended already. */
  onEnd(cb: (e: ChatEndEvent) => void): Unsubscribe {
    const off = this.endListeners.add(cb);
    const ended = this.endEvent;
    if (ended) setTimeout(() => cb(ended), 0);
    return off;
  }

  /** The agent's read position moved. */
  onReadReceipt(cb: (r: ReadReceiptEvent) => void): Unsubscribe {
    return this.receiptListeners.add(cb);
  }

  /** The stream stopped for good (e.g. origin not allowed, chat not found); status is then closed. */
  onError(cb: (err: ChatEngineError) => void): Unsubscribe {
    return this.errorListeners.add(cb);
  }

  /**
   * Sends a message; resolves once it is stored. It carries a request id, and a failure that
   * may be transient (unavailable, a dropped connection) is retried with the same id, so it is
   * stored once however often it is tried. The message also reaches onMessage (once).
   */
  async sendMessage(opts: SendMessageOptions): Promise<ChatMessage> {
    const requestId = opts.requestId ?? newRequestId();
    const backoff = new Backoff(this.sdk.backoffOptions);
    const giveUpAt = Date.now() + this.sdk.sendRetryMs;
    const content = opts.content;
    for (;;) {
      try {
        const r = await this.sdk.call((o) =>
          this.sdk.rpc.sendVisitorMessage(
            { conversationId: this.id, type: PbMessageType.TEXT, text: content, requestId },
            o,
          ),
        );
        const msg: ChatMessage = {
          id: r.messageId,
          conversationId: this.id,
          seq: r.seq,
          senderType: "visitor",
          senderId: this.sdk.visitor?.id,
          content: content,
          type: "text",
          sentAt: dateOf(r.createTime),
          deleted: false,
        };
        const known = this.byId.get(msg.id);
        if (known) return known;
        this.remember(msg);
        this.messageListeners.emit(msg);
        return msg;
      } catch (e) {
        const err = toChatEngineError(e);
        const delay = backoff.next();
        if (!err.retryable || Date.now() + delay > giveUpAt) throw err;
        await sleep(delay);
      }
    }
  }

  /** Tells the agent the visitor is typing (or stopped). */
  async setTyping(typing = true): Promise<void> {
    await this.sdk.call((o) => this.sdk.rpc.setVisitorTyping({ conversationId: this.id, typing }, o));
  }

  /** Ends the chat from the visitor's side. */
  async end(): Promise<void> {
    const r = await this.sdk.call((o) => this.sdk.rpc.endChat({ conversationId: this.id }, o));
    if (r.conversation) {
      this.statusNow = chatStatusOf(r.conversation.status);
      if (this.statusNow === "closed") {
        this.ended(r.conversation.lastSeq, dateOf(r.conversation.lastActivityTime));
      }
    }
  }

  /** Rates the ended chat: score 1-5 and an optional comment, once. */
  async rate(score: number, comment = ""): Promise<Rating> {
    const r = await this.sdk.call((o) =>
      this.sdk.rpc.submitRating({ conversationId: this.id, score, comment }, o),
    );
    this.sdk.forgetChat();
    const out: Rating = {
      conversationId: r.conversationId,
      score: r.score,
      comment: r.comment,
      createdAt: dateOf(r.createTime),
    };
    if (r.agentId) out.agentId = r.agentId;
    return out;
  }

  /** Closes the stream (the chat itself goes on; see {@link end}). */
  disconnect(): void {
    this.stream.stop();
  }

  private async attempt(signal: AbortSignal, connected: () => void): Promise<void> {
    await this.sdk.freshToken();
    const items = this.sdk.rpc.subscribeVisitor(
      { cursors: this.cursors.list() },
      this.sdk.callOptions(true, signal),
    );
    await pumpItems(items, this.cursors, (item) => this.onItem(item), connected);
  }

  private onItem(item: StreamItem): void {
    const k = item.kind;
    switch (k.case) {
      case "event": {
        const ev = k.value;
        if (ev.conversationId !== this.id) return;
        const e = ev.kind;
        if (e.case === "messagePosted") {
          const msg = messageOf(e.value, (id) => this.names.get(id));
          if (!this.byId.has(msg.id) && !this.seqs.has(msg.seq)) {
            this.remember(msg);
            this.messageListeners.emit(msg);
          }
        } else if (e.case === "messageEdited" || e.case === "messageDeleted") {
          const msg = messageOf(e.value, (id) => this.names.get(id));
          const i = this.ordered.findIndex((m) => m.id === msg.id);
          if (i >= 0) this.ordered[i] = msg;
          this.byId.set(msg.id, msg);
        } else if (e.case === "statusChanged") {
          const s = chatStatusOf(e.value.status);
          this.statusNow = s;
          const agent = e.value.assignedAgentId;
          if (agent && e.value.assignedAgentName) this.names.set(agent, e.value.assignedAgentName);
          if (agent && agent !== this.agentNow) {
            this.agentNow = agent;
            this.agentListeners.emit({ agentId: agent, name: this.names.get(agent) });
          }
          if (s !== "queued") this.queueNow = undefined;
          if (s === "closed") this.ended(ev.seq, dateOf(ev.createTime));
        }
        return;
      }
      case "typing": {
        const t = k.value;
        if (t.conversationId !== this.id || t.senderId === this.sdk.visitor?.id) return;
        this.typingListeners.emit({
          conversationId: t.conversationId,
          senderType: "agent",
          senderId: t.senderId,
          name: this.names.get(t.senderId),
          typing: t.typing,
        });
        return;
      }
      case "queuePosition": {
        const q = k.value;
        if (q.conversationId !== this.id) return;
        const was = this.queueNow;
        // A (re)connected stream repeats the current place: tell only changes.
        if (was && was.position === q.position && was.estimatedWaitSeconds === q.estimatedWaitSeconds) return;
        const upd = { position: q.position, estimatedWaitSeconds: q.estimatedWaitSeconds };
        this.queueNow = upd;
        this.queueListeners.emit(upd);
        return;
      }
      case "readReceipt": {
        const r = k.value;
        if (r.conversationId !== this.id || r.readerId === this.sdk.visitor?.id) return;
        this.receiptListeners.emit({ readerId: r.readerId, readSeq: r.readSeq });
        return;
      }
      default:
        return;
    }
  }

  private ended(seq: number, at: Date): void {
    this.statusNow = "closed";
    if (this.endEvent) return;
    this.endEvent = { conversationId: this.id, seq, endedAt: at };
    this.endListeners.emit(this.endEvent);
  }

  private remember(m: ChatMessage): void {
    this.byId.set(m.id, m);
    this.seqs.add(m.seq);
    // Keep seq order: a send's answer can arrive before the stream brings an earlier seq.
    let i = this.ordered.length;
    while (i > 0 && this.ordered[i - 1].seq > m.seq) i--;
    this.ordered.splice(i, 0, m);
  }
}

