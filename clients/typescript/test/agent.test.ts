// The agent facade's session against the real server: tokens refreshed before they expire,
// the stream ended for good (with an error) when the agent is deactivated, and logout.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { createClient } from "@connectrpc/connect";
import { ChatEngineAgent, UnauthenticatedError, type ChatEngineError, type ConnectionStatus } from "../src/agent.js";
import { AgentService } from "../src/gen/chatengine/v1/agent_pb.js";
import { AGENT_PASSWORD, TestServer, createAgent, createTenant, until, type TenantFixture } from "./harness.js";

describe("agent sessions", () => {
  // Access tokens live 63 s: the facade refreshes a minute before expiry, so about 3 s in.
  const server = new TestServer({ CHAT_ENGINE_ACCESS_TOKEN_TTL_SECS: "63" });
  let t: TenantFixture;

  before(async () => {
    await server.start();
    t = await createTenant(server, "sessions");
  });

  after(async () => {
    await server.dispose();
  });

  const login = (email: string) =>
    ChatEngineAgent.login({
      baseUrl: server.baseUrl,
      tenantSlug: t.slug,
      email,
      password: AGENT_PASSWORD,
      backoff: { initialMs: 100, maxMs: 1000 },
    });

  it("refreshes the access token by itself before it expires; the stream goes on", async () => {
    const a = await createAgent(server, t, "Rae Agent");
    const agent = await login(a.email);
    assert.equal(agent.me.displayName, "Rae Agent");
    const first = agent.accessTokenExpiresAt.getTime();
    assert.ok(first - Date.now() < 64_000);
    const statuses: ConnectionStatus[] = [];
    const sub = agent.subscribe({ onConnectionStatus: (s) => statuses.push(s) });
    await until(() => sub.status === "connected", "the stream");
    await until(() => agent.accessTokenExpiresAt.getTime() > first, "a refresh", 20_000);
    // Well before the first token's expiry, and the new token works.
    assert.ok(Date.now() < first - 30_000);
    assert.equal((await agent.setStatus("away")).status, "away");
    assert.deepEqual(statuses, ["connected"], "the stream never dropped");
    sub.unsubscribe();
    await agent.logout();
  });

  it("a deactivated agent's stream stops with an error instead of reconnecting forever", async () => {
    const a = await createAgent(server, t, "Dee Agent");
    const agent = await login(a.email);
    const errors: ChatEngineError[] = [];
    const sub = agent.subscribe({ onError: (e) => errors.push(e) });
    await until(() => sub.status === "connected", "the stream");
    await createClient(AgentService, server.transport()).deactivateAgent(
      { agentId: a.id },
      { headers: { authorization: `Bearer ${t.adminToken}` } },
    );
    await until(() => errors.length > 0, "the stream's final error");
    assert.ok(errors[0] instanceof UnauthenticatedError, String(errors[0]));
    assert.equal(sub.status, "closed");
  });

  it("after logout the session's calls are refused", async () => {
    const a = await createAgent(server, t, "Lou Agent");
    const agent = await login(a.email);
    await agent.setStatus("available");
    await agent.logout();
    // Sign-outs reach every node within a second; the facade does not refresh after logout.
    let refused: unknown;
    const deadline = Date.now() + 10_000;
    while (!refused && Date.now() < deadline) {
      try {
        await agent.setStatus("busy");
        await new Promise((r) => setTimeout(r, 100));
      } catch (e) {
        refused = e;
      }
    }
    assert.ok(refused instanceof UnauthenticatedError, String(refused));
  });
});
