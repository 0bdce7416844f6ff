// The integration tests' harness: starts the real server binary (`target/debug/chat-engine
// serve`, with its private PostgreSQL in a temp dir), restarts it on the same port and data,
// and sets up tenants, widget keys and agents through the admin and agent APIs over the same
// gRPC-web protocol the SDK speaks.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, openSync, closeSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-node";
import { TenantService } from "../src/gen/chatengine/admin/v1/tenant_pb.js";
import { AgentService } from "../src/gen/chatengine/v1/agent_pb.js";
import { AuthService } from "../src/gen/chatengine/v1/auth_pb.js";
import { AgentRole } from "../src/gen/chatengine/v1/common_pb.js";
import { WorkflowService } from "../src/gen/chatengine/v1/workflow_pb.js";

const here = fileURLToPath(new URL(".", import.meta.url));
/** clients/typescript, whether running from test/ or build/test/. */
export const packageDir = resolve(here, here.includes(`${join("build", "test")}`) ? "../.." : "..");
const repoDir = resolve(packageDir, "../..");
const binary = process.env.CHAT_ENGINE_BIN ?? join(repoDir, "target/debug/chat-engine");

async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const addr = s.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      s.close(() => res(port));
    });
  });
}

/** A running `chat-engine serve` of this test run. */
export class TestServer {
  readonly operatorToken = `op-${Math.random().toString(36).slice(2)}-token`;
  private readonly dir = mkdtempSync(join(tmpdir(), "chat-engine-ts-"));
  private readonly jwtSecret = `jwt-${Math.random().toString(36).slice(2)}-${Date.now()}-secret-for-tests`;
  private child: ChildProcess | undefined;
  private readonly extraEnv: Record<string, string>;
  port = 0;

  /** A server with these environment variables on top of the harness's own. */
  constructor(extraEnv: Record<string, string> = {}) {
    this.extraEnv = extraEnv;
  }

  /** The base URL of the server's gRPC-web endpoint. */
  get baseUrl(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Starts the server (again, on the same port and data dir after a stop). */
  async start(): Promise<void> {
    if (!this.port) this.port = await freePort();
    const log = openSync(join(this.dir, "server.log"), "a");
    // No DATABASE_URL: the server starts its private cluster in the data dir.
    const { DATABASE_URL: _ignored, ...env } = process.env;
    this.child = spawn(binary, ["serve"], {
      env: {
        ...env,
        CHAT_ENGINE_LISTEN: `127.0.0.1:${this.port}`,
        CHAT_ENGINE_DATA_DIR: join(this.dir, "data"),
        CHAT_ENGINE_OPERATOR_TOKEN: this.operatorToken,
        // Kept across a restart, so tokens issued before it stay valid after it.
        CHAT_ENGINE_JWT_SECRET: this.jwtSecret,
        CHAT_ENGINE_SHUTDOWN_GRACE_SECS: "2",
        // Every test calls from 127.0.0.1 with few keys: only the per-visitor limit is on,
        // small enough for the rate-limit test to reach it.
        CHAT_ENGINE_RATE_LIMITS__VISITOR_PER_KEY__PER_MINUTE: "0",
        CHAT_ENGINE_RATE_LIMITS__VISITOR_PER_IP__PER_MINUTE: "0",
        CHAT_ENGINE_RATE_LIMITS__VISITOR_PER_VISITOR__PER_MINUTE: "120",
        CHAT_ENGINE_RATE_LIMITS__VISITOR_PER_VISITOR__BURST: "30",
        CHAT_ENGINE_LOG_FORMAT: "pretty",
        ...this.extraEnv,
      },
      stdio: ["ignore", log, log],
    });
    closeSync(log);
    const exited = new Promise<never>((_, rej) =>
      this.child?.once("exit", (code) => rej(new Error(`chat-engine exited with ${code}; see ${this.dir}/server.log`))),
    );
    await Promise.race([this.ready(), exited]);
  }

  /** Stops the server gracefully (SIGTERM: streams end with Resync, then ABORTED) and waits for its exit. */
  async stop(): Promise<void> {
    const c = this.child;
    if (!c || c.exitCode !== null) return;
    const done = new Promise((res) => c.once("exit", res));
    c.kill("SIGTERM");
    const timer = setTimeout(() => c.kill("SIGKILL"), 15_000);
    await done;
    clearTimeout(timer);
    this.child = undefined;
  }

  /** Stops the server and removes its data. */
  async dispose(): Promise<void> {
    await this.stop();
    if (!process.env.KEEP_TEST_SERVER) rmSync(this.dir, { recursive: true, force: true });
  }

  /**
   * A gRPC-web transport over Node's HTTP/1.1 client, for the tests' setup calls. The facades
   * under test use their own transport (Connect-ES's gRPC-web over fetch): when the server
   * refuses a call before reading its body (the auth layer), Node's HTTP/1.1 client can fail
   * with EPIPE while still writing it, where fetch reads the answer.
   */
  transport(interceptors: Interceptor[] = []): Transport {
    return createGrpcWebTransport({ baseUrl: this.baseUrl, httpVersion: "1.1", interceptors });
  }

  private async ready(): Promise<void> {
    const tenants = createClient(TenantService, this.transport());
    const deadline = Date.now() + 60_000;
    for (;;) {
      try {
        await tenants.listTenants({ pageSize: 1 }, { headers: { authorization: `Bearer ${this.operatorToken}` } });
        return;
      } catch (e) {
        if (Date.now() > deadline) throw e;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  }
}

/** Sets `Origin` on every call, as a browser on that page would. */
export function origin(o: string): Interceptor {
  return (next) => async (req) => {
    req.header.set("origin", o);
    return next(req);
  };
}

/** A tenant set up for a test. */
export interface TenantFixture {
  tenantId: string;
  slug: string;
  apiKey: string;
  apiKeyId: string;
  adminToken: string;
  allowedOrigin: string;
}

const ADMIN_PASSWORD = "admin-password-123";
/** The password of every agent the tests create. */
export const AGENT_PASSWORD = "agent-password-123";

/**
 * Creates a tenant with an admin, a widget key allowed on `allowedOrigin`, and optionally a
 * default workflow (e.g. without auto-assignment, so chats wait until an agent accepts them).
 */
export async function createTenant(
  server: TestServer,
  slug: string,
  opts: { allowedOrigin?: string; autoAssign?: boolean; welcome?: string } = {},
): Promise<TenantFixture> {
  const t = server.transport();
  const op = { headers: { authorization: `Bearer ${server.operatorToken}` } };
  const tenants = createClient(TenantService, t);
  const email = `admin@${slug}.example`;
  const created = await tenants.createTenant(
    {
      name: `Tenant ${slug}`,
      slug,
      widget: { primaryColor: "#112233", title: `Help from ${slug}`, languages: ["en", "es"] },
      initialAdmin: { email, displayName: "Admin", password: ADMIN_PASSWORD },
    },
    op,
  );
  const tenantId = created.tenant?.id ?? "";
  const allowedOrigin = opts.allowedOrigin ?? "https://shop.example.com";
  const key = await tenants.createApiKey({ tenantId, name: "widget", allowedDomains: [allowedOrigin] }, op);
  const login = await createClient(AuthService, t).login({ tenantSlug: slug, email, password: ADMIN_PASSWORD });
  const adminToken = login.tokens?.accessToken ?? "";
  if (opts.autoAssign !== undefined || opts.welcome !== undefined) {
    await createClient(WorkflowService, t).createWorkflow(
      {
        name: "default",
        enabled: true,
        isDefault: true,
        actions: { autoAssign: opts.autoAssign ?? true, welcomeMessage: opts.welcome ?? "" },
      },
      { headers: { authorization: `Bearer ${adminToken}` } },
    );
  }
  return { tenantId, slug, apiKey: key.secret, apiKeyId: key.apiKey?.id ?? "", adminToken, allowedOrigin };
}

/** Creates an agent (as the tenant's admin); returns their email. */
export async function createAgent(
  server: TestServer,
  t: TenantFixture,
  name: string,
  email = `${name.toLowerCase().replace(/\s+/g, ".")}@${t.slug}.example`,
): Promise<{ id: string; email: string }> {
  const r = await createClient(AgentService, server.transport()).createAgent(
    { email, displayName: name, role: AgentRole.AGENT, password: AGENT_PASSWORD, maxConcurrentChats: 3 },
    { headers: { authorization: `Bearer ${t.adminToken}` } },
  );
  return { id: r.agent?.id ?? "", email };
}

/** Resolves when `cond` holds, polling; rejects with `what` after `ms`. */
export async function until(cond: () => boolean, what: string, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
