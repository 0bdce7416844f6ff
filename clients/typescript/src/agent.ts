/**
 * `@chat-engine/sdk/agent`: the agent facade for browser agent apps (the console): log in
 * (tokens refreshed before they expire), conversations and their messages, the queue, accept /
 * transfer / close, the resuming event stream, sends, typing and read marks.
 *
 * @module
 */
import { createClient, type CallOptions, type Client } from "@connectrpc/connect";
import { Backoff, sleep, type BackoffOptions } from "./backoff.js";
import { chatStatusOf, dateOf, messageOf } from "./convert.js";
import { ChatEngineError, UnauthenticatedError, toChatEngineError } from "./errors.js";
import { AgentService, type Agent } from "./gen/chatengine/v1/agent_pb.js";
import { AuthService, type TokenPair } from "./gen/chatengine/v1/auth_pb.js";
import { AgentRole, AgentStatus } from "./gen/chatengine/v1/common_pb.js";
import {
  ConversationKind,
  ConversationService,
  ListDirection,
  Presence,
  type Conversation,
  type ConversationSummary,
  type StreamItem,
} from "./gen/chatengine/v1/conversation_pb.js";
import { QueueService, type AgentState, type WaitingChat } from "./gen/chatengine/v1/queue_pb.js";
import { newRequestId } from "./ids.js";
import { Reconnector, SeqCursors, onNetworkBack, pumpItems } from "./stream.js";
import { makeTransport, type ConnectionOptions } from "./transport.js";
import type { ChatMessage, ChatStatus, ConnectionStatus, TypingEvent, Unsubscribe } from "./types.js";

export {
  ChatEngineError,
  RateLimitedError,
  PermissionDeniedError,
  NotFoundError,
  InvalidArgumentError,
  UnauthenticatedError,
  toChatEngineError,
} from "./errors.js";
export type { ErrorCode, FieldViolation } from "./errors.js";
export type * from "./types.js";
export type { ConnectionOptions } from "./transport.js";
export type { BackoffOptions } from "./backoff.js";

/** An agent's availability. */
export type AgentStatusName = "available" | "busy" | "away" | "offline";

/** An agent's role in their tenant. */
export type AgentRoleName = "agent" | "admin";

/** An agent of the tenant. */
export interface AgentProfile {
  /** Agent id. */
  id: string;
  /** Email. */
  email: string;
  /** Display name. */
  displayName: string;
  /** Role. */
  role: AgentRoleName;
  /** Availability. */
  status: AgentStatusName;
  /** External chats at once. */
  maxConcurrentChats: number;
  /** Skills for routing. */
  skills: { name: string; level: number }[];
  /** False once deactivated. */
  active: boolean;
}

/** Kind of conversation. */
export type ConversationKindName = "direct" | "group" | "external";

/** A conversation the agent can see. */
export interface ConversationInfo {
  /** Conversation id. */
  id: string;
  /** Kind. */
  kind: ConversationKindName;
  /** Status. */
  status: ChatStatus;
  /** Title of a group. */
  title: string;
  /** Agent members. */
  memberAgentIds: string[];
  /** The visitor of an external chat. */
  visitorId?: string;
  /** The agent serving an external chat. */
  assignedAgentId?: string;
  /** Seq of its newest event. */
  lastSeq: number;
  /** Created. */
  createdAt: Date;
  /** Last message sent (or created). */
  lastActivityAt: Date;
}

/** A conversation in the agent's list. */
export interface ConversationListItem {
  /** The conversation. */
  conversation: ConversationInfo;
  /** Messages after the agent's read position, not their own. */
  unreadCount: number;
  /** Newest message. */
  lastMessage?: ChatMessage;
  /** The agent's read position. */
  readSeq: number;
}

/** A chat waiting in the queue. */
export interface WaitingChatInfo {
  /** The chat. */
  conversation: ConversationInfo;
  /** 1 for the next to be served. */
  position: number;
  /** Workflow priority. */
  priority: number;
  /** Since when it waits. */
  enqueuedAt: Date;
  /** Skills an agent needs for it. */
  requiredSkills: string[];
  /** Whether the dispatcher assigns it by itself. */
  autoAssign: boolean;
  /** The visitor's name. */
  visitorName: string;
  /** The workflow that routed it. */
  workflowId: string;
}

/** An agent's routing state. */
export interface AgentStateInfo {
  /** Agent id. */
  agentId: string;
  /** Display name. */
  displayName: string;
  /** Availability. */
  status: AgentStatusName;
  /** Has an open stream. */
  online: boolean;
  /** External chats they serve. */
  openChats: number;
  /** Their capacity. */
  capacity: number;
}

/** One snapshot of the live queue (QueueService.WatchQueue). */
export interface QueueSnapshot {
  /** The first waiting chats in serving order. */
  chats: WaitingChatInfo[];
  /** How many wait in all. */
  total: number;
  /** Every agent's state. */
  agents: AgentStateInfo[];
}

/** Presence of an agent. */
export type PresenceName = "online" | "away" | "offline";

/** One item of the agent's event stream, by kind. */
export type AgentStreamItem =
  | { kind: "message"; message: ChatMessage }
  | { kind: "messageEdited"; message: ChatMessage }
  | { kind: "messageDeleted"; message: ChatMessage }
  | { kind: "membersChanged"; conversationId: string; seq: number; added: boolean; agentIds: string[]; actorAgentId?: string }
  | { kind: "statusChanged"; conversationId: string; seq: number; status: ChatStatus; assignedAgentId?: string }
  | ({ kind: "typing" } & TypingEvent)
  | { kind: "readReceipt"; conversationId: string; readerId: string; readSeq: number }
  | { kind: "presence"; agentId: string; presence: PresenceName; status: AgentStatusName }
  | { kind: "joined"; conversation: ConversationInfo; visitor?: { id: string; name: string; email: string } }
  | { kind: "caughtUp" };

type ItemOf<K extends AgentStreamItem["kind"]> = Extract<AgentStreamItem, { kind: K }>;

/** Per-kind handlers for {@link ChatEngineAgent.subscribe}; set the ones you need. */
export interface AgentStreamHandlers {
  /** Every item. */
  onItem?: (item: AgentStreamItem) => void;
  /** A new message, once, in seq order per conversation. */
  onMessage?: (message: ChatMessage) => void;
  /** A message's new text. */
  onMessageEdited?: (message: ChatMessage) => void;
  /** A message was deleted. */
  onMessageDeleted?: (message: ChatMessage) => void;
  /** Members joined or left. */
  onMembersChanged?: (e: ItemOf<"membersChanged">) => void;
  /** A conversation was queued, assigned, transferred or closed. */
  onStatusChanged?: (e: ItemOf<"statusChanged">) => void;
  /** Someone typed. */
  onTyping?: (e: TypingEvent) => void;
  /** Someone's read position moved. */
  onReadReceipt?: (e: ItemOf<"readReceipt">) => void;
  /** An agent's presence. */
  onPresence?: (e: ItemOf<"presence">) => void;
  /**
   * The agent was added to a conversation (e.g. a chat assigned to them). What was said before
   * is history: load it with listMessages. (Should the stream reconnect before that
   * conversation's next event, it resumes it from its start, so its earlier messages then
   * reach onMessage too; dedupe by id against what you loaded.)
   */
  onJoined?: (e: ItemOf<"joined">) => void;
  /** The replay is done; what follows is live (after every reconnect). */
  onCaughtUp?: () => void;
  /** Connection state (connection lost / restored). */
  onConnectionStatus?: (s: ConnectionStatus) => void;
  /** The stream stopped for good (e.g. the agent was signed out). */
  onError?: (err: ChatEngineError) => void;
}

/** Options of {@link ChatEngineAgent.subscribe}. */
export interface SubscribeOptions {
  /**
   * Where to resume per conversation (id → last seq seen). Default: every conversation of the
   * agent's list from its newest seq, so the stream brings what happens from now on.
   */
  cursors?: Record<string, number>;
}

/** A running subscription. */
export interface AgentSubscription {
  /** Closes the stream. */
  unsubscribe(): void;
  /** The stream's state. */
  readonly status: ConnectionStatus;
  /** The last seq delivered per conversation (to resume elsewhere). */
  cursors(): Record<string, number>;
}

/** What {@link ChatEngineAgent.login} takes. */
export interface AgentLoginOptions extends ConnectionOptions {
  /** Tenant slug. */
  tenantSlug: string;
  /** Agent email. */
  email: string;
  /** Agent password. */
  password: string;
  /** Reconnect delays of streams and send retries. */
  backoff?: BackoffOptions;
  /** How long a send keeps retrying transient failures before it fails (default 30 000 ms). */
  sendRetryMs?: number;
}

const REFRESH_BEFORE_MS = 60_000;

/** A logged-in agent. */
export class ChatEngineAgent {
  private readonly options: AgentLoginOptions;
  private readonly auth: Client<typeof AuthService>;
  private readonly agents: Client<typeof AgentService>;
  private readonly conversations: Client<typeof ConversationService>;
  private readonly queue: Client<typeof QueueService>;
  private tokens: TokenPair;
  private profile: AgentProfile;
  private refreshing: Promise<void> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly names = new Map<string, string>();
  private readonly running = new Set<Reconnector>();
  private loggedOut = false;

  private constructor(options: AgentLoginOptions, tokens: TokenPair) {
    this.options = options;
    const transport = makeTransport(options);
    this.auth = createClient(AuthService, transport);
    this.agents = createClient(AgentService, transport);
    this.conversations = createClient(ConversationService, transport);
    this.queue = createClient(QueueService, transport);
    this.tokens = tokens;
    this.profile = {
      id: tokens.agentId,
      email: options.email,
      displayName: "",
      role: "agent",
      status: "offline",
      maxConcurrentChats: 0,
      skills: [],
      active: true,
    };
  }

  /** Logs in with tenant slug, email and password; the tokens are refreshed before they expire. */
  static async login(options: AgentLoginOptions): Promise<ChatEngineAgent> {
    const auth = createClient(AuthService, makeTransport(options));
    let tokens: TokenPair | undefined;
    try {
      tokens = (
        await auth.login({ tenantSlug: options.tenantSlug, email: options.email, password: options.password })
      ).tokens;
    } catch (e) {
      throw toChatEngineError(e);
    }
    if (!tokens) throw new ChatEngineError("internal", "Login answered no tokens");
    const agent = new ChatEngineAgent(options, tokens);
    agent.scheduleRefresh();
    const me = await agent.call((o) => agent.agents.getAgent({ agentId: tokens.agentId }, o));
    if (me.agent) agent.profile = profileOf(me.agent);
    agent.names.set(agent.profile.id, agent.profile.displayName);
    return agent;
  }

  /** The logged-in agent (as of login or their last setStatus). */
  get me(): AgentProfile {
    return this.profile;
  }

  /** The agent's tenant id. */
  get tenantId(): string {
    return this.tokens.tenantId;
  }

  /** When the current access token expires (it is refreshed a minute before). */
  get accessTokenExpiresAt(): Date {
    return dateOf(this.tokens.accessTokenExpireTime);
  }

  /** Sets the agent's own availability. */
  async setStatus(status: AgentStatusName): Promise<AgentProfile> {
    const r = await this.call((o) => this.agents.setMyStatus({ status: agentStatusFrom(status) }, o));
    if (r.agent) this.profile = profileOf(r.agent);
    return this.profile;
  }

  /** The tenant's agents (and remembers their names for senderName). */
  async listAgents(): Promise<AgentProfile[]> {
    const out: AgentProfile[] = [];
    let pageToken = "";
    do {
      const r = await this.call((o) => this.agents.listAgents({ pageSize: 200, pageToken }, o));
      for (const a of r.agents) {
        const p = profileOf(a);
        this.names.set(p.id, p.displayName);
        out.push(p);
      }
      pageToken = r.nextPageToken;
    } while (pageToken);
    return out;
  }

  /** One page of the agent's conversations, newest activity first. */
  async listConversations(opts: { pageSize?: number; pageToken?: string } = {}): Promise<{
    conversations: ConversationListItem[];
    nextPageToken: string;
  }> {
    const r = await this.call((o) =>
      this.conversations.listConversations({ pageSize: opts.pageSize ?? 50, pageToken: opts.pageToken ?? "" }, o),
    );
    return { conversations: r.conversations.map((c) => this.summaryOf(c)), nextPageToken: r.nextPageToken };
  }

  /** One conversation with the agent's unread count. */
  async getConversation(conversationId: string): Promise<ConversationListItem> {
    const r = await this.call((o) => this.conversations.getConversation({ conversationId }, o));
    if (!r.conversation) throw new ChatEngineError("internal", "GetConversation answered nothing");
    return this.summaryOf(r.conversation);
  }

  /**
   * Messages of a conversation in seq order: by default the newest `limit` (50); `after` gives
   * those after a seq, `before` those before one.
   */
  async listMessages(
    conversationId: string,
    opts: { after?: number; before?: number; limit?: number } = {},
  ): Promise<ChatMessage[]> {
    const forward = opts.after !== undefined;
    const r = await this.call((o) =>
      this.conversations.listMessages(
        {
          conversationId,
          direction: forward ? ListDirection.FORWARD : ListDirection.BACKWARD,
          anchorSeq: forward ? opts.after ?? 0 : opts.before ?? 0,
          pageSize: opts.limit ?? 50,
        },
        o,
      ),
    );
    const msgs = r.messages.map((m) => messageOf(m, (id) => this.names.get(id)));
    return forward ? msgs : msgs.reverse();
  }

  /** The chats waiting in the queue, in serving order. */
  async waitingChats(opts: { pageSize?: number; pageToken?: string } = {}): Promise<{
    chats: WaitingChatInfo[];
    total: number;
    nextPageToken: string;
  }> {
    const r = await this.call((o) =>
      this.queue.listWaitingChats({ pageSize: opts.pageSize ?? 50, pageToken: opts.pageToken ?? "" }, o),
    );
    return { chats: r.chats.map(waitingOf), total: r.total, nextPageToken: r.nextPageToken };
  }

  /** The tenant's agents with their routing states. */
  async agentStates(): Promise<AgentStateInfo[]> {
    const r = await this.call((o) => this.queue.listAgentStates({}, o));
    return r.agents.map(agentStateOf);
  }

  /**
   * Follows the live queue: `cb` gets a full snapshot at once and on every change; reconnects
   * by itself (`onStatus`), stops on a final error (`onError`). Returns the function that stops it.
   */
  watchQueue(
    cb: (s: QueueSnapshot) => void,
    onStatus?: (s: ConnectionStatus) => void,
    onError?: (err: ChatEngineError) => void,
  ): Unsubscribe {
    const r = new Reconnector({
      backoff: this.options.backoff,
      onStatus: (s) => onStatus?.(s),
      onFatal: (err) => onError?.(err),
      renewCredentials: () => this.refresh(),
      attempt: async (signal, connected) => {
        await this.freshToken();
        for await (const snap of this.queue.watchQueue({}, this.callOptions(signal))) {
          connected();
          cb({ chats: snap.chats.map(waitingOf), total: snap.total, agents: snap.agents.map(agentStateOf) });
        }
      },
    });
    return this.run(r);
  }

  /** Takes a waiting chat. */
  async accept(conversationId: string): Promise<ConversationInfo> {
    const r = await this.call((o) => this.queue.acceptChat({ conversationId }, o));
    return conversationOf(required(r.conversation));
  }

  /**
   * Declines a chat offered to the agent: it goes back to the queue at its place, is never
   * offered to them again, and is offered to the next agent.
   */
  async decline(conversationId: string): Promise<ConversationInfo> {
    const r = await this.call((o) => this.queue.declineChat({ conversationId }, o));
    return conversationOf(required(r.conversation));
  }

  /** Hands a chat to another agent, or back to the queue for agents with a skill. */
  async transfer(conversationId: string, to: { agentId: string } | { skill: string }): Promise<ConversationInfo> {
    const target =
      "agentId" in to ? { case: "agentId" as const, value: to.agentId } : { case: "skill" as const, value: to.skill };
    const r = await this.call((o) => this.queue.transferChat({ conversationId, target }, o));
    return conversationOf(required(r.conversation));
  }

  /** Ends an external chat the agent serves; the visitor is asked for a rating. */
  async close(conversationId: string): Promise<ConversationInfo> {
    const r = await this.call((o) => this.queue.closeChat({ conversationId }, o));
    return conversationOf(required(r.conversation));
  }

  /**
   * Opens the agent's event stream: every event of every conversation they belong to, each
   * once and in seq order per conversation, across reconnects (it resumes by seq).
   * `handlers` is one callback for every item, or per-kind handlers.
   */
  subscribe(
    handlers: ((item: AgentStreamItem) => void) | AgentStreamHandlers,
    opts: SubscribeOptions = {},
  ): AgentSubscription {
    const h: AgentStreamHandlers = typeof handlers === "function" ? { onItem: handlers } : handlers;
    const cursors = new SeqCursors(opts.cursors ? Object.entries(opts.cursors) : undefined);
    // Seeded inside the attempt, so a failure (server down at start) is retried like any other.
    let seeded = opts.cursors !== undefined;
    const r = new Reconnector({
      backoff: this.options.backoff,
      onStatus: (s) => h.onConnectionStatus?.(s),
      onFatal: (err) => h.onError?.(err),
      renewCredentials: () => this.refresh(),
      attempt: async (signal, connected) => {
        if (!seeded) {
          await this.seedCursors(cursors);
          seeded = true;
        }
        await this.freshToken();
        const items = this.conversations.subscribe({ cursors: cursors.list() }, this.callOptions(signal));
        await pumpItems(items, cursors, (item) => this.dispatch(item, h), connected);
      },
    });
    const stop = this.run(r);
    return {
      unsubscribe: stop,
      get status() {
        return r.status;
      },
      cursors: () => Object.fromEntries(cursors.list().map((c) => [c.conversationId, Number(c.lastSeq)])),
    };
  }

  /**
   * Sends a text message; resolves once stored. Carries a request id, and transient failures
   * are retried with the same id, so the message is stored once.
   */
  async send(conversationId: string, content: string, opts: { requestId?: string } = {}): Promise<ChatMessage> {
    const requestId = opts.requestId ?? newRequestId();
    const backoff = new Backoff(this.options.backoff);
    const giveUpAt = Date.now() + (this.options.sendRetryMs ?? 30_000);
    for (;;) {
      try {
        const r = await this.call((o) => this.conversations.sendMessage({ conversationId, text: content, requestId }, o));
        return {
          id: r.messageId,
          conversationId,
          seq: r.seq,
          senderType: "agent",
          senderId: this.profile.id,
          senderName: this.profile.displayName || undefined,
          content,
          type: "text",
          sentAt: dateOf(r.createTime),
          deleted: false,
        };
      } catch (e) {
        const err = toChatEngineError(e);
        const delay = backoff.next();
        if (!err.retryable || Date.now() + delay > giveUpAt) throw err;
        await sleep(delay);
      }
    }
  }

  /** Tells the other side the agent is typing (or stopped). */
  async setTyping(conversationId: string, typing = true): Promise<void> {
    await this.call((o) => this.conversations.setTyping({ conversationId, typing }, o));
  }

  /** Moves the agent's read position to `seq`. */
  async markRead(conversationId: string, seq: number): Promise<{ readSeq: number; unreadCount: number }> {
    const r = await this.call((o) => this.conversations.markRead({ conversationId, seq }, o));
    return { readSeq: r.readSeq, unreadCount: r.unreadCount };
  }

  /** Ends the session on the server, closes the streams and stops refreshing. */
  async logout(): Promise<void> {
    this.loggedOut = true;
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    for (const r of [...this.running]) r.stop();
    try {
      await this.auth.logout({ refreshToken: this.tokens.refreshToken });
    } catch (e) {
      throw toChatEngineError(e);
    }
  }

  /** Gets new tokens now (done by itself a minute before expiry). */
  refresh(): Promise<void> {
    if (this.loggedOut) return Promise.reject(new ChatEngineError("unauthenticated", "logged out"));
    this.refreshing ??= (async () => {
      try {
        const r = await this.auth.refresh({ refreshToken: this.tokens.refreshToken });
        if (!r.tokens) throw new ChatEngineError("internal", "Refresh answered no tokens");
        this.tokens = r.tokens;
        this.scheduleRefresh();
      } catch (e) {
        throw toChatEngineError(e);
      } finally {
        this.refreshing = undefined;
      }
    })();
    return this.refreshing;
  }

  private scheduleRefresh(): void {
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    const left = this.accessTokenExpiresAt.getTime() - Date.now();
    const wait = Math.max(1_000, left - REFRESH_BEFORE_MS);
    this.refreshTimer = setTimeout(() => {
      // A failed refresh is retried on the next call (freshToken) or stream reconnect.
      this.refresh().catch(() => undefined);
    }, wait);
    // Node: a pending refresh must not keep the process alive by itself.
    (this.refreshTimer as { unref?: () => void }).unref?.();
  }

  private async freshToken(): Promise<void> {
    if (this.accessTokenExpiresAt.getTime() - Date.now() < REFRESH_BEFORE_MS / 2) await this.refresh();
  }

  private callOptions(signal?: AbortSignal): CallOptions {
    return { headers: { authorization: `Bearer ${this.tokens.accessToken}` }, signal };
  }

  private async call<T>(fn: (o: CallOptions) => Promise<T>): Promise<T> {
    try {
      await this.freshToken();
      try {
        return await fn(this.callOptions());
      } catch (e) {
        // The token may have been cut short (a restart with a new secret): refresh once.
        if (!(toChatEngineError(e) instanceof UnauthenticatedError) || this.loggedOut) throw e;
        await this.refresh();
        return await fn(this.callOptions());
      }
    } catch (e) {
      throw toChatEngineError(e);
    }
  }

  private run(r: Reconnector): Unsubscribe {
    this.running.add(r);
    const offNet = onNetworkBack(() => r.kick());
    void r.start().finally(() => {
      offNet();
      this.running.delete(r);
    });
    return () => r.stop();
  }

  private async seedCursors(cursors: SeqCursors): Promise<void> {
    // Names first, so the first messages already carry senderName.
    await this.listAgents().catch(() => undefined);
    let pageToken = "";
    do {
      const page = await this.listConversations({ pageSize: 200, pageToken });
      for (const c of page.conversations) cursors.follow(c.conversation.id, c.conversation.lastSeq);
      pageToken = page.nextPageToken;
    } while (pageToken);
  }

  private summaryOf(c: ConversationSummary): ConversationListItem {
    const out: ConversationListItem = {
      conversation: conversationOf(required(c.conversation)),
      unreadCount: c.unreadCount,
      readSeq: c.readSeq,
    };
    if (c.lastMessage) out.lastMessage = messageOf(c.lastMessage, (id) => this.names.get(id));
    return out;
  }

  private dispatch(item: StreamItem, h: AgentStreamHandlers): void {
    const out = this.itemOf(item);
    if (!out) return;
    h.onItem?.(out);
    switch (out.kind) {
      case "message":
        return h.onMessage?.(out.message);
      case "messageEdited":
        return h.onMessageEdited?.(out.message);
      case "messageDeleted":
        return h.onMessageDeleted?.(out.message);
      case "membersChanged":
        return h.onMembersChanged?.(out);
      case "statusChanged":
        return h.onStatusChanged?.(out);
      case "typing": {
        const { kind: _kind, ...t } = out;
        return h.onTyping?.(t);
      }
      case "readReceipt":
        return h.onReadReceipt?.(out);
      case "presence":
        return h.onPresence?.(out);
      case "joined":
        return h.onJoined?.(out);
      case "caughtUp":
        return h.onCaughtUp?.();
    }
  }

  private itemOf(item: StreamItem): AgentStreamItem | undefined {
    const names = (id: string) => this.names.get(id);
    const k = item.kind;
    switch (k.case) {
      case "event": {
        const ev = k.value;
        const e = ev.kind;
        switch (e.case) {
          case "messagePosted":
            return { kind: "message", message: messageOf(e.value, names) };
          case "messageEdited":
            return { kind: "messageEdited", message: messageOf(e.value, names) };
          case "messageDeleted":
            return { kind: "messageDeleted", message: messageOf(e.value, names) };
          case "membersAdded":
          case "memberRemoved": {
            const out: AgentStreamItem = {
              kind: "membersChanged",
              conversationId: ev.conversationId,
              seq: ev.seq,
              added: e.case === "membersAdded",
              agentIds: [...e.value.agentIds],
            };
            if (e.value.actorAgentId) out.actorAgentId = e.value.actorAgentId;
            return out;
          }
          case "statusChanged": {
            const out: AgentStreamItem = {
              kind: "statusChanged",
              conversationId: ev.conversationId,
              seq: ev.seq,
              status: chatStatusOf(e.value.status),
            };
            if (e.value.assignedAgentId) out.assignedAgentId = e.value.assignedAgentId;
            return out;
          }
          default:
            return undefined;
        }
      }
      case "typing": {
        const t = k.value;
        const isAgent = this.names.has(t.senderId);
        const out: AgentStreamItem = {
          kind: "typing",
          conversationId: t.conversationId,
          senderType: isAgent ? "agent" : "visitor",
          senderId: t.senderId,
          typing: t.typing,
        };
        const name = names(t.senderId);
        if (name) out.name = name;
        return out;
      }
      case "readReceipt":
        return {
          kind: "readReceipt",
          conversationId: k.value.conversationId,
          readerId: k.value.readerId,
          readSeq: k.value.readSeq,
        };
      case "presence":
        return {
          kind: "presence",
          agentId: k.value.agentId,
          presence: presenceOf(k.value.presence),
          status: agentStatusOf(k.value.status),
        };
      case "joined": {
        const j = k.value;
        const out: AgentStreamItem = { kind: "joined", conversation: conversationOf(required(j.conversation)) };
        if (j.visitor) out.visitor = { id: j.visitor.id, name: j.visitor.name, email: j.visitor.email };
        return out;
      }
      case "caughtUp":
        return { kind: "caughtUp" };
      default:
        return undefined;
    }
  }
}

function required<T>(v: T | undefined): T {
  if (v === undefined) throw new ChatEngineError("internal", "the server answered an empty message");
  return v;
}

function agentStatusOf(s: AgentStatus): AgentStatusName {
  switch (s) {
    case AgentStatus.AVAILABLE:
      return "available";
    case AgentStatus.BUSY:
      return "busy";
    case AgentStatus.AWAY:
      return "away";
    default:
      return "offline";
  }
}

function agentStatusFrom(s: AgentStatusName): AgentStatus {
  switch (s) {
    case "available":
      return AgentStatus.AVAILABLE;
    case "busy":
      return AgentStatus.BUSY;
    case "away":
      return AgentStatus.AWAY;
    case "offline":
      return AgentStatus.OFFLINE;
    default:
      // Let the server refuse it with a field error rather than guessing.
      return AgentStatus.UNSPECIFIED;
  }
}

function presenceOf(p: Presence): PresenceName {
  return p === Presence.ONLINE ? "online" : p === Presence.AWAY ? "away" : "offline";
}

function profileOf(a: Agent): AgentProfile {
  return {
    id: a.id,
    email: a.email,
    displayName: a.displayName,
    role: a.role === AgentRole.ADMIN ? "admin" : "agent",
    status: agentStatusOf(a.status),
    maxConcurrentChats: a.maxConcurrentChats,
    skills: a.skills.map((s) => ({ name: s.name, level: s.level })),
    active: a.active,
  };
}

function conversationOf(c: Conversation): ConversationInfo {
  const out: ConversationInfo = {
    id: c.id,
    kind:
      c.kind === ConversationKind.EXTERNAL ? "external" : c.kind === ConversationKind.GROUP ? "group" : "direct",
    status: chatStatusOf(c.status),
    title: c.title,
    memberAgentIds: [...c.memberAgentIds],
    lastSeq: c.lastSeq,
    createdAt: dateOf(c.createTime),
    lastActivityAt: dateOf(c.lastActivityTime),
  };
  if (c.visitorId) out.visitorId = c.visitorId;
  if (c.assignedAgentId) out.assignedAgentId = c.assignedAgentId;
  return out;
}

function waitingOf(w: WaitingChat): WaitingChatInfo {
  return {
    conversation: conversationOf(required(w.conversation)),
    position: w.position,
    priority: w.priority,
    enqueuedAt: dateOf(w.enqueueTime),
    requiredSkills: [...w.requiredSkills],
    autoAssign: w.autoAssign,
    visitorName: w.visitorName,
    workflowId: w.workflowId,
  };
}

function agentStateOf(a: AgentState): AgentStateInfo {
  return {
    agentId: a.agentId,
    displayName: a.displayName,
    status: agentStatusOf(a.status),
    online: a.online,
    openChats: a.openChats,
    capacity: a.capacity,
  };
}
