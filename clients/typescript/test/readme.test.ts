// Runs the README's TypeScript snippets as they are written (only the key, password and
// address swapped for this test's server), each against the other side driven by the SDK.
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { after, before, describe, it } from "node:test";
import { ChatEngineSDK, type ChatMessage, type TypingEvent } from "../src/index.js";
import { ChatEngineAgent } from "../src/agent.js";
import { AGENT_PASSWORD, TestServer, createAgent, createTenant, packageDir, until, type TenantFixture } from "./harness.js";

function snippet(name: string): string {
  const readme = readFileSync(resolve(packageDir, "../../README.md"), "utf8");
  const m = new RegExp(`<!-- snippet: ${name}[^>]*-->\\n\`\`\`ts\\n([\\s\\S]*?)\`\`\`\\n`).exec(readme);
  assert.ok(m, `README snippet ${name}`);
  return m[1];
}

/** Runs a snippet as an ES module inside the package, so `@chat-engine/sdk` resolves to it (dist/). */
function run(name: string, code: string): { child: ChildProcess; out: () => string; exit: Promise<number | null> } {
  const dir = join(packageDir, "build");
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `readme-${name}.mjs`);
  writeFileSync(file, code);
  const child = spawn(process.execPath, [file], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  child.stdout?.on("data", (d) => (out += d));
  child.stderr?.on("data", (d) => (out += d));
  const exit = new Promise<number | null>((res) => child.once("exit", (code) => res(code)));
  return { child, out: () => out, exit };
}

describe("README snippets", () => {
  const server = new TestServer();
  let demo: TenantFixture;

  before(async () => {
    await server.start();
    // As `chat-engine demo` names them: tenant demo, agent ana@demo.example; no workflow, so
    // the built-in defaults assign chats to whoever is available.
    demo = await createTenant(server, "demo");
    await createAgent(server, demo, "Ana Agent", "ana@demo.example");
    await createAgent(server, demo, "Ben Agent", "ben@demo.example");
  });

  after(async () => {
    await server.dispose();
  });

  const swap = (code: string) =>
    code
      .replaceAll("http://127.0.0.1:50051", server.baseUrl)
      .replaceAll("DEMO_WIDGET_KEY", demo.apiKey)
      .replaceAll("ANA_PASSWORD", AGENT_PASSWORD);

  it("the visitor snippet chats with an agent and rates the chat", async () => {
    const ben = await ChatEngineAgent.login({
      baseUrl: server.baseUrl,
      tenantSlug: "demo",
      email: "ben@demo.example",
      password: AGENT_PASSWORD,
    });
    await ben.setStatus("available");
    const seen: string[] = [];
    const sub = ben.subscribe({
      onJoined: async ({ conversation }) => {
        await ben.setTyping(conversation.id, true);
        await ben.send(conversation.id, "Hello Ada, Ben here.");
      },
      onMessage: (m) => seen.push(`${m.senderType}:${m.content}`),
    });
    await until(() => sub.status === "connected", "Ben's stream");

    const p = run("ts-visitor", swap(snippet("ts-visitor")));
    try {
      await until(() => p.out().includes("agent: Hello Ada, Ben here."), `the agent's message in: ${p.out()}`, 30_000);
      assert.match(p.out(), /agent [0-9a-f-]+ joined/);
      assert.match(p.out(), /the agent is typing\.\.\./);
      const chatId = (await ben.listConversations()).conversations.find((c) => c.conversation.kind === "external")
        ?.conversation.id;
      assert.ok(chatId);
      // Sent before Ben joined: in the history, not on his stream.
      const history = await ben.listMessages(chatId);
      assert.ok(history.some((m) => m.senderType === "visitor" && m.content === "Hi! A question about my bill."));
      assert.ok(seen.includes("agent:Hello Ada, Ben here."), seen.join("|"));
      await ben.close(chatId);
      // onEnd rates the chat and disconnects: the snippet's process ends by itself.
      const code = await p.exit;
      assert.equal(code, 0, p.out());
      assert.equal(p.out().match(/agent: Hello Ada, Ben here\./g)?.length, 1, "the message once");
    } finally {
      p.child.kill();
      await ben.setStatus("offline");
      await ben.logout();
    }
  });

  it("the agent snippet answers a visitor and closes on bye", async () => {
    const p = run("ts-agent", swap(snippet("ts-agent")));
    try {
      const sdk = new ChatEngineSDK({ apiKey: demo.apiKey, baseUrl: server.baseUrl });
      const v = await sdk.initVisitor({ name: "Ada" });
      const chat = await sdk.startChat({ visitorId: v.id });
      const got: ChatMessage[] = [];
      const typing: TypingEvent[] = [];
      let ended = false;
      chat.onMessage((m) => got.push(m));
      chat.onTyping((t) => typing.push(t));
      chat.onEnd(() => (ended = true));
      // The chat waits until Ana's snippet is online and available, then the dispatcher gives it to her.
      await until(() => chat.assignedAgentId !== undefined, `the chat assigned; snippet says: ${p.out()}`, 30_000);
      await until(() => p.out().includes(`new chat ${chat.id} with Ada`), `the snippet's join line: ${p.out()}`);
      await chat.sendMessage({ content: "Can you help?" });
      await until(() => got.some((m) => m.senderType === "agent"), "the snippet's answer");
      const answer = got.filter((m) => m.senderType === "agent");
      assert.deepEqual(
        answer.map((m) => m.content),
        ['You wrote "Can you help?". How can I help?'],
      );
      assert.ok(typing.some((t) => t.typing && t.senderId === chat.assignedAgentId));
      await chat.sendMessage({ content: "Great, bye!" });
      await until(() => ended, "the snippet closes the chat");
      assert.equal(chat.status, "closed");
      chat.disconnect();
    } finally {
      p.child.kill();
      await p.exit;
    }
  });
});
