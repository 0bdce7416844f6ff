/**
 * The plain types of the facades' public API: what callbacks receive and calls return. They
 * hide the generated protobuf messages (enums become string unions, 64-bit seqs plain
 * numbers, timestamps Dates), so an app does not depend on the wire shape.
 *
 * @module
 */

/** A function that removes the callback it was returned for. */
export type Unsubscribe = () => void;

/** Who sent a message. */
export type SenderType = "visitor" | "agent" | "system";

/** Kind of content a message carries (only text so far). */
export type MessageType = "text";

/** A message of a chat or conversation. */
export interface ChatMessage {
  /** Message id (UUID). */
  id: string;
  /** The conversation it belongs to. */
  conversationId: string;
  /** Its place in the conversation, gapless from 1. */
  seq: number;
  /** Who sent it. */
  senderType: SenderType;
  /** The sending agent's or visitor's id; absent for system messages. */
  senderId?: string;
  /** The sender's display name when the SDK knows it (agents, on the agent side). */
  senderName?: string;
  /** Text; empty once deleted. */
  content: string;
  /** Kind of content. */
  type: MessageType;
  /** When it was sent. */
  sentAt: Date;
  /** When it was last edited, if ever. */
  editedAt?: Date;
  /** True once deleted. */
  deleted: boolean;
}

/** A waiting visitor's place in the queue. */
export interface QueueUpdate {
  /** 1 for the next chat to be served. */
  position: number;
  /** Estimated wait in seconds; 0 when unknown. */
  estimatedWaitSeconds: number;
}

/** Someone started or stopped typing. */
export interface TypingEvent {
  /** The conversation. */
  conversationId: string;
  /** Whether the typist is an agent or the visitor. */
  senderType: "visitor" | "agent";
  /** The typist's id. */
  senderId?: string;
  /** The typist's name when the SDK knows it. */
  name?: string;
  /** True while typing. */
  typing: boolean;
}

/** An agent took the chat (assignment, accept or transfer). */
export interface AgentJoinedEvent {
  /** The agent now serving the chat. */
  agentId: string;
  /** Their display name when the SDK knows it. */
  name?: string;
}

/** State of a facade's event stream, for "connection lost / restored". */
export type ConnectionStatus = "connecting" | "connected" | "reconnecting" | "closed";

/** Lifecycle of a chat or conversation. */
export type ChatStatus = "queued" | "open" | "closed";

/** A chat ended (by the visitor, the agent or the workflow). */
export interface ChatEndEvent {
  /** The chat. */
  conversationId: string;
  /** Seq of the event that ended it. */
  seq: number;
  /** When it ended. */
  endedAt: Date;
}

/** A stored satisfaction rating. */
export interface Rating {
  /** The chat. */
  conversationId: string;
  /** 1 (bad) to 5 (great). */
  score: number;
  /** The visitor's comment. */
  comment: string;
  /** The agent who served the chat, if any. */
  agentId?: string;
  /** When it was given. */
  createdAt: Date;
}

/** Kind of visitor. */
export type VisitorType = "new" | "returning" | "identified";

/** A website visitor as the visitor SDK knows them after initVisitor. */
export interface VisitorSession {
  /** Visitor id (UUID). */
  id: string;
  /** Visitor token for the later calls (the SDK sends it itself). */
  token: string;
  /** When the token expires; the SDK renews it with the same session id before then. */
  tokenExpiresAt: Date;
  /** Kind of visitor. */
  type: VisitorType;
  /** The session id the visitor was created or resumed with. */
  sessionId: string;
  /** Name, as last reported. */
  name: string;
  /** Email, as last reported. */
  email: string;
  /** Verified external user id of an identified visitor. */
  externalUserId?: string;
  /** The visitor's chats, newest first: the open one, if any, and past ones. */
  chats: ChatSummary[];
}

/** A chat in a visitor's list. */
export interface ChatSummary {
  /** Conversation id. */
  id: string;
  /** Status. */
  status: ChatStatus;
  /** The agent serving it, if any. */
  assignedAgentId?: string;
  /** Seq of its newest event. */
  lastSeq: number;
  /** When it was created. */
  createdAt: Date;
  /** When its last message was sent. */
  lastActivityAt: Date;
}

/** Corner of the page where the launcher sits. */
export type WidgetPosition = "bottom-right" | "bottom-left";

/** Colour scheme of the widget. */
export type WidgetTheme = "light" | "dark" | "auto";

/** A tenant's widget branding and settings (VisitorService.GetWidgetConfig). */
export interface WidgetConfig {
  /** Tenant display name. */
  tenantName: string;
  /** True when at least one agent is available. */
  agentsOnline: boolean;
  /** Primary colour as #RRGGBB ("" when unset). */
  primaryColor: string;
  /** Secondary colour as #RRGGBB ("" when unset). */
  secondaryColor: string;
  /** CSS font family ("" when unset). */
  fontFamily: string;
  /** Logo URL ("" when unset). */
  logoUrl: string;
  /** Launcher corner. */
  position: WidgetPosition;
  /** Colour scheme. */
  theme: WidgetTheme;
  /** Default agent avatar URL ("" when unset: no avatar shown). */
  avatarUrl: string;
  /** Whether visitors may upload files. */
  fileUploadEnabled: boolean;
  /** Languages offered (BCP 47), the first the default; may be empty. */
  languages: string[];
  /** Header title ("" when unset). */
  title: string;
  /** Greeting before the first message ("" when unset). */
  greeting: string;
}
