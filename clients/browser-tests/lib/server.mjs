// Starts the real server for the browser tests: `chat-engine demo` from target/debug (cargo
// builds it before these tests run) on a free loopback port, over a private PostgreSQL
// cluster in a temporary data dir, and reads the demo's credentials from what it prints.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, existsSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const ROOT = resolve(import.meta.dirname, "../../..");
export const BINARY = process.env.CHAT_ENGINE_BIN ?? join(ROOT, "target/debug/chat-engine");

/** A free TCP port on 127.0.0.1 (asked of the kernel, then released). */
export function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

/** A running `chat-engine demo`; restart() stops it and starts it again on the same port and data. */
export class DemoServer {
  /** `env`: more environment for the server, e.g. its rate limits. */
  static async start(env = {}) {
    if (!existsSync(BINARY)) throw new Error(`${BINARY} is missing: run cargo build first`);
    const s = new DemoServer(await freePort(), mkdtempSync(join(tmpdir(), "chat-engine-browser-")), env);
    await s.run();
    return s;
  }

  constructor(port, dataDir, env = {}) {
    this.env = env;
    this.port = port;
    this.dataDir = dataDir;
    this.origin = `http://127.0.0.1:${port}`;
    this.agents = {};
    this.apiKey = "";
    this.child = undefined;
    this.log = "";
  }

  run() {
    const child = spawn(BINARY, ["demo", "--listen", `127.0.0.1:${this.port}`], {
      env: {
        ...process.env,
        CHAT_ENGINE_DATA_DIR: this.dataDir,
        CHAT_ENGINE_SHUTDOWN_GRACE_SECS: "2",
        RUST_LOG: process.env.RUST_LOG ?? "warn",
        ...this.env,
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child = child;
    let out = "";
    child.stderr.on("data", (d) => {
      this.log = (this.log + d.toString()).slice(-20000);
    });
    return new Promise((ok, fail) => {
      const timer = setTimeout(() => fail(new Error(`demo did not start in 120 s:\n${out}\n${this.log}`)), 120_000);
      child.once("exit", (code) => {
        clearTimeout(timer);
        fail(new Error(`demo exited with ${code}:\n${out}\n${this.log}`));
      });
      child.stdout.on("data", (d) => {
        out += d.toString();
        for (const m of out.matchAll(/^\s+\w+\s+(\S+@\S+)\s+password: (\S+)/gm)) this.agents[m[1]] = m[2];
        const key = /widget api key \(x-api-key\): (\S+)/.exec(out);
        if (key) this.apiKey = key[1];
        // The last line printed before it serves.
        if (/visitor: chat-engine talk visitor/.test(out)) {
          clearTimeout(timer);
          child.removeAllListeners("exit");
          ok();
        }
      });
    });
  }

  /** Stops the server (SIGTERM, then SIGKILL after 15 s) and waits until it has exited. */
  stop() {
    const child = this.child;
    this.child = undefined;
    if (!child || child.exitCode !== null) return Promise.resolve();
    return new Promise((ok) => {
      const kill = setTimeout(() => child.kill("SIGKILL"), 15_000);
      child.once("exit", () => {
        clearTimeout(kill);
        ok();
      });
      child.kill("SIGTERM");
    });
  }

  async restart() {
    await this.stop();
    await this.run();
  }

  async dispose() {
    await this.stop();
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}
