/**
 * From the generated wire messages to the facades' plain types (seqs are uint32 on the wire,
 * so they are plain numbers already).
 *
 * @module
 */
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { WidgetPosition as PbWidgetPosition, WidgetTheme as PbWidgetTheme, VisitorType as PbVisitorType } from "./gen/chatengine/v1/common_pb.js";
import {
  ConversationStatus,
  SenderType as PbSenderType,
  type Conversation,
  type Message,
} from "./gen/chatengine/v1/conversation_pb.js";
import type { GetWidgetConfigResponse } from "./gen/chatengine/v1/visitor_pb.js";
import type { ChatMessage, ChatStatus, ChatSummary, SenderType, VisitorType, WidgetConfig } from "./types.js";

/** A timestamp as a Date; the epoch when absent, which the server never leaves absent where we read it. */
export function dateOf(t: Timestamp | undefined): Date {
  return t ? timestampDate(t) : new Date(0);
}

/** The facade's sender type. */
export function senderTypeOf(t: PbSenderType): SenderType {
  switch (t) {
    case PbSenderType.AGENT:
      return "agent";
    case PbSenderType.VISITOR:
      return "visitor";
    default:
      return "system";
  }
}

/** The facade's chat status; UNSPECIFIED reads as open. */
export function chatStatusOf(s: ConversationStatus): ChatStatus {
  switch (s) {
    case ConversationStatus.QUEUED:
      return "queued";
    case ConversationStatus.CLOSED:
      return "closed";
    default:
      return "open";
  }
}

/** A message of the wire as the facades show it. */
export function messageOf(m: Message, names?: (agentId: string) => string | undefined): ChatMessage {
  const senderType = senderTypeOf(m.senderType);
  const out: ChatMessage = {
    id: m.id,
    conversationId: m.conversationId,
    seq: m.seq,
    senderType,
    content: m.text,
    type: "text",
    sentAt: dateOf(m.createTime),
    deleted: m.deleted,
  };
  if (m.senderId) {
    out.senderId = m.senderId;
    const name = senderType === "agent" ? names?.(m.senderId) : undefined;
    if (name) out.senderName = name;
  }
  if (m.editTime) out.editedAt = timestampDate(m.editTime);
  return out;
}

/** A conversation as a visitor's chat summary. */
export function chatSummaryOf(c: Conversation): ChatSummary {
  const out: ChatSummary = {
    id: c.id,
    status: chatStatusOf(c.status),
    lastSeq: c.lastSeq,
    createdAt: dateOf(c.createTime),
    lastActivityAt: dateOf(c.lastActivityTime),
  };
  if (c.assignedAgentId) out.assignedAgentId = c.assignedAgentId;
  return out;
}

/** The visitor type's facade name. */
export function visitorTypeOf(t: PbVisitorType): VisitorType {
  switch (t) {
    case PbVisitorType.IDENTIFIED:
      return "identified";
    case PbVisitorType.RETURNING:
      return "returning";
    default:
      return "new";
  }
}

/** The widget's configuration with the server's defaults filled in. */
export function widgetConfigOf(r: GetWidgetConfigResponse): WidgetConfig {
  const w = r.widget;
  return {
    tenantName: r.tenantName,
    agentsOnline: r.agentsOnline,
    primaryColor: w?.primaryColor ?? "",
    secondaryColor: w?.secondaryColor ?? "",
    fontFamily: w?.fontFamily ?? "",
    logoUrl: w?.logoUrl ?? "",
    position: w?.position === PbWidgetPosition.BOTTOM_LEFT ? "bottom-left" : "bottom-right",
    theme: w?.theme === PbWidgetTheme.DARK ? "dark" : w?.theme === PbWidgetTheme.AUTO ? "auto" : "light",
    avatarUrl: w?.avatarUrl ?? "",
    fileUploadEnabled: w?.fileUploadEnabled ?? false,
    languages: [...(w?.languages ?? [])],
    title: w?.title ?? "",
    greeting: w?.greeting ?? "",
  };
}
