// The widget and the agent console in a real browser against a real server: a visitor on
// /demo chats with an agent in /console (queue place while nobody serves, messages and
// typing both ways, the rating at the end), a reload mid-chat, a server restart mid-chat, a
// page on an origin the key does not allow, axe-core on the open widget, and screenshots.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { DemoServer, freePort } from "../lib/server.mjs";
import { artifact, axeViolations, launch } from "../lib/browser.mjs";

const LONG = { timeout: 60_000 };
const W = "#chat-engine-widget";

let server;
let browser;

before(async () => {
  server = await DemoServer.start();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await server?.dispose();
});

/** A fresh browser context (its own storage) with the demo page open. */
async function visitorPage(opts = {}) {
  const ctx = await browser.newContext({ locale: "en-US", ...opts });
  const page = await ctx.newPage();
  page.on("pageerror", (e) => console.error("visitor page error:", e.message));
  await page.goto(`${server.origin}/demo`);
  return page;
}

async function openWidget(page) {
  await page.locator(`${W} .launcher`).click();
  await page.locator(`${W} .panel`).waitFor({ state: "visible" });
}

/** Texts of the widget's messages (without the screen-reader prefix). */
async function widgetMessages(page) {
  return page.locator(`${W} .log [data-id] .bubble`).evaluateAll((els) =>
    els.map((e) => e.lastChild?.textContent ?? ""),
  );
}

async function consoleMessages(page) {
  return page.locator("#messages .msg").evaluateAll((els) => els.map((e) => e.lastChild?.textContent ?? ""));
}

function count(list, text) {
  return list.filter((t) => t === text).length;
}

describe("widget and console", () => {
  let visitor;
  let agent;

  it("a waiting visitor sees their place in the queue", LONG, async () => {
    visitor = await visitorPage();
    await openWidget(visitor);
    // No agent is available yet: the widget offers the offline form, which starts a chat.
    await visitor.getByRole("heading", { name: "We're away right now" }).waitFor();
    await visitor.getByLabel("Name").fill("Vera Visitor");
    await visitor.getByLabel("Email").fill("vera@example.com");
    await visitor.getByLabel("Message", { exact: true }).fill("Hello, my invoice is wrong");
    await visitor.getByRole("button", { name: "Send message" }).click();
    await visitor.locator(`${W} .banner`, { hasText: "You are number 1 in the queue." }).waitFor();
    assert.deepEqual(count(await widgetMessages(visitor), "Hello, my invoice is wrong"), 1);
    const axe = await axeViolations(visitor, W);
    assert.deepEqual(axe, [], "axe-core: no serious or critical issue in the open widget");
  });

  it("an agent accepts in the console and they chat both ways with typing", LONG, async () => {
    const ctx = await browser.newContext({ locale: "en-US" });
    agent = await ctx.newPage();
    agent.on("pageerror", (e) => console.error("console page error:", e.message));
    await agent.goto(`${server.origin}/console`);
    await agent.getByLabel("Email").fill("ana@demo.example");
    await agent.getByLabel("Password").fill(server.agents["ana@demo.example"]);
    await agent.getByRole("button", { name: "Log in" }).click();
    await agent.getByRole("button", { name: "Accept chat with Vera Visitor" }).click();
    await agent.locator("#chat-title", { hasText: "Vera Visitor" }).waitFor();
    await agent.locator("#messages .msg", { hasText: "Hello, my invoice is wrong" }).waitFor();

    await visitor.locator(`${W} .note`, { hasText: "Ana Agent joined the chat." }).waitFor();
    assert.equal(await visitor.locator(`${W} .banner`).first().isHidden(), true, "no queue place once served");

    // Agent typing reaches the widget, then the reply.
    await agent.locator("#reply").pressSequentially("Hi Vera", { delay: 20 });
    await visitor.locator(`${W} .typing`, { hasText: "Ana Agent is typing…" }).waitFor();
    await agent.locator("#reply").press("Enter");
    await visitor.locator(`${W} .msg.agent`, { hasText: "Hi Vera" }).waitFor();
    await visitor.locator(`${W} .typing`, { hasText: /^$/ }).waitFor();

    // Visitor typing reaches the console, then the message.
    const input = visitor.getByRole("textbox", { name: "Type your message" });
    await input.pressSequentially("It says 90 instead of 60", { delay: 20 });
    await agent.locator("#typing", { hasText: "Vera Visitor is typing…" }).waitFor();
    await input.press("Enter");
    await agent.locator("#messages .msg", { hasText: "It says 90 instead of 60" }).waitFor();
    assert.equal(count(await consoleMessages(agent), "It says 90 instead of 60"), 1);
    assert.equal(count(await widgetMessages(visitor), "It says 90 instead of 60"), 1);
  });

  it("a reload mid-chat brings the history back without duplicates", LONG, async () => {
    const before = await widgetMessages(visitor);
    await visitor.reload();
    await openWidget(visitor);
    await visitor.locator(`${W} .msg.agent`, { hasText: "Hi Vera" }).waitFor();
    const afterReload = await widgetMessages(visitor);
    assert.deepEqual(afterReload, before, "the same messages, once each, in order");
    await visitor.getByRole("textbox", { name: "Type your message" }).fill("Back after a reload");
    await visitor.getByRole("textbox", { name: "Type your message" }).press("Enter");
    await agent.locator("#messages .msg", { hasText: "Back after a reload" }).waitFor();
  });

  it("a server restart mid-chat shows reconnecting, then every message arrives once", { timeout: 180_000 }, async () => {
    const restarting = server.restart();
    await visitor.locator(`${W} .banner.warn`, { hasText: "Connection lost. Reconnecting…" }).waitFor({ timeout: 60_000 });
    await restarting;
    await visitor.locator(`${W} .banner.warn`, { hasText: "Connection restored." }).waitFor({ timeout: 90_000 });
    await agent.locator("#conn", { hasText: "Connected" }).waitFor({ timeout: 90_000 });

    await agent.locator("#reply").fill("Still there after the restart?");
    await agent.locator("#reply").press("Enter");
    await visitor.locator(`${W} .msg.agent`, { hasText: "Still there after the restart?" }).waitFor();
    await visitor.getByRole("textbox", { name: "Type your message" }).fill("Yes, still here");
    await visitor.getByRole("textbox", { name: "Type your message" }).press("Enter");
    await agent.locator("#messages .msg", { hasText: "Yes, still here" }).waitFor();

    const seen = await widgetMessages(visitor);
    for (const text of [
      "Hello, my invoice is wrong",
      "Hi Vera",
      "It says 90 instead of 60",
      "Back after a reload",
      "Still there after the restart?",
      "Yes, still here",
    ]) {
      assert.equal(count(seen, text), 1, `widget shows "${text}" once: ${JSON.stringify(seen)}`);
    }
    const agentSeen = await consoleMessages(agent);
    assert.equal(count(agentSeen, "Yes, still here"), 1);
    assert.equal(count(agentSeen, "Still there after the restart?"), 1);
  });

  it("an agent message while the widget is closed shows an unread badge", LONG, async () => {
    await visitor.getByRole("textbox", { name: "Type your message" }).press("Escape");
    await visitor.locator(`${W} .panel`).waitFor({ state: "hidden" });
    await agent.locator("#reply").fill("Anything else?");
    await agent.locator("#reply").press("Enter");
    await visitor.locator(`${W} .badge`, { hasText: "1" }).waitFor();
    await visitor.getByRole("button", { name: "Open chat (1 unread messages)" }).click();
    await visitor.locator(`${W} .badge`).waitFor({ state: "hidden" });
    assert.equal(count(await widgetMessages(visitor), "Anything else?"), 1);
  });

  it("the agent closes the chat and the visitor rates it", LONG, async () => {
    await agent.getByRole("button", { name: "Close chat" }).click();
    await visitor.getByRole("group", { name: "How was your chat?" }).waitFor();
    const axe = await axeViolations(visitor, W);
    assert.deepEqual(axe, [], "axe-core: the survey has no serious or critical issue");
    await visitor.getByLabel("5 of 5").check({ force: true });
    await visitor.getByLabel("Comment (optional)").fill("Quick and kind");
    await visitor.getByRole("button", { name: "Send rating" }).click();
    await visitor.getByText("Thank you for your feedback!").waitFor();
    await agent.locator("#chat-status", { hasText: "closed" }).waitFor();
  });

  it("an available agent is offered the next chat, which they transfer back to the queue", LONG, async () => {
    await agent.getByLabel("Status").selectOption("available");
    // With an agent available the widget offers the chat at once instead of the offline form.
    const second = await visitorPage();
    await openWidget(second);
    const input = second.getByRole("textbox", { name: "Type your message" });
    await input.fill("A technical question");
    await input.press("Enter");
    await second.locator(`${W} .note`, { hasText: "Ana Agent joined the chat." }).waitFor();
    // The dispatcher gave it to Ana (the only available agent): it is in her list.
    await agent.locator("#mine .item", { hasText: "open" }).first().waitFor();
    await agent.locator("#mine .item").first().click();
    await agent.locator("#messages .msg", { hasText: "A technical question" }).waitFor();
    await agent.getByLabel("Transfer to").selectOption("skill:technical");
    await agent.getByRole("button", { name: "Transfer" }).click();
    // Nobody with the technical skill is available: the visitor waits in the queue again.
    await second.locator(`${W} .banner`, { hasText: "You are number 1 in the queue." }).waitFor();
    await agent.locator("#queue .queue-item").first().waitFor();
    await second.context().close();
  });

  it("keyboard alone opens the widget, reaches the field and closes it with Escape", LONG, async () => {
    const page = await visitorPage();
    await page.locator(`${W} .launcher`).focus();
    await page.keyboard.press("Enter");
    await page.locator(`${W} .panel`).waitFor({ state: "visible" });
    await page.locator(`${W} .footer form`).waitFor();
    const focused = await page.evaluate(() => document.querySelector("#chat-engine-widget")?.shadowRoot?.activeElement?.tagName);
    assert.ok(["INPUT", "TEXTAREA"].includes(focused ?? ""), `focus moves into the panel, got ${focused}`);
    await page.keyboard.press("Escape");
    await page.locator(`${W} .panel`).waitFor({ state: "hidden" });
    const back = await page.evaluate(() => document.querySelector("#chat-engine-widget")?.shadowRoot?.activeElement?.className);
    assert.equal(back, "launcher", "focus returns to the launcher");
    await page.context().close();
  });

  it("a page on an origin the key does not allow gets no chat and a clear message", LONG, async () => {
    // The demo page, as another website would embed it: same script, same key, other origin.
    const html = (await (await fetch(`${server.origin}/demo`)).text()).replace(
      '<script src="/widget.js"',
      `<script src="${server.origin}/widget.js"`,
    );
    const port = await freePort();
    const site = createServer((_, res) => {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(html);
    });
    await new Promise((ok) => site.listen(port, "127.0.0.1", ok));
    try {
      const ctx = await browser.newContext({ locale: "en-US" });
      const page = await ctx.newPage();
      await page.goto(`http://127.0.0.1:${port}/`);
      await openWidget(page);
      await page.getByRole("alert").filter({ hasText: "Chat is not available on this website." }).waitFor();
      assert.equal(await page.locator(`${W} textarea`).count(), 0, "no way to chat");
      await ctx.close();
    } finally {
      site.close();
    }
  });

  it("screenshots of the open widget in light and dark theme and in Spanish", LONG, async () => {
    for (const [name, opts, label] of [
      ["widget-light.png", { colorScheme: "light" }, "Open chat"],
      ["widget-dark.png", { colorScheme: "dark" }, "Open chat"],
      ["widget-es.png", { colorScheme: "light", locale: "es-ES" }, "Abrir chat"],
    ]) {
      const page = await visitorPage(opts);
      await page.getByRole("button", { name: label }).click();
      await page.locator(`${W} .panel`).waitFor({ state: "visible" });
      // The footer is filled once the tenant's settings are in.
      await page.locator(`${W} .footer form`).waitFor();
      const theme = await page.locator(`${W} .root`).getAttribute("data-theme");
      assert.equal(theme, opts.colorScheme, `${name}: theme follows the system setting`);
      if (opts.locale === "es-ES") {
        await page.getByText("¡Hola! ¿En qué podemos ayudarte?").or(page.getByText("Hi! How can we help?")).first().waitFor();
        assert.equal(await page.locator(`${W} .root`).getAttribute("lang"), "es");
      }
      await page.screenshot({ path: artifact(name) });
      await page.context().close();
    }
  });
});

describe("a rate-limited visitor", () => {
  let limited;
  let browser2;

  before(async () => {
    // Two visitor calls per client address, then one a minute.
    limited = await DemoServer.start({
      CHAT_ENGINE_RATE_LIMITS__VISITOR_PER_IP__PER_MINUTE: "1",
      CHAT_ENGINE_RATE_LIMITS__VISITOR_PER_IP__BURST: "2",
    });
    browser2 = await launch();
  });

  after(async () => {
    await browser2?.close();
    await limited?.dispose();
  });

  it("is told how long to wait", LONG, async () => {
    const ctx = await browser2.newContext({ locale: "en-US" });
    const page = await ctx.newPage();
    // Each load asks for the widget's settings once (answered once the footer has a form):
    // the third is over the limit.
    for (let i = 0; i < 2; i++) {
      await page.goto(`${limited.origin}/demo`);
      await page.locator(`${W} .footer form`).waitFor({ state: "attached" });
    }
    await page.goto(`${limited.origin}/demo`);
    await page.locator(`${W} .launcher`).click();
    await page.getByRole("alert").filter({ hasText: /Too many requests\. Please try again in \d+ seconds\./ }).waitFor();
    assert.equal(await page.locator(`${W} textarea`).count(), 0);
    await ctx.close();
  });
});
