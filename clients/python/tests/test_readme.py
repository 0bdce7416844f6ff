"""The README's Python snippet, run as a user would run it, against a real tenant."""

from __future__ import annotations

import re
import subprocess
import sys

from chat_engine_sdk import AgentClient
from chat_engine_sdk.pb.chatengine.v1 import conversation_pb2 as cpb
from conftest import ORIGIN, PASSWORD, REPO, WAIT

SNIPPET = re.compile(r"<!-- snippet:python -->\s*```python\n(.*?)```\s*<!-- /snippet:python -->", re.S)


def test_the_readme_snippet_runs(server, tenant):
    code = SNIPPET.search((REPO / "README.md").read_text()).group(1)
    email = tenant.agent("ana")
    # The snippet's placeholders, replaced by this server, tenant and agent.
    for placeholder, value in {
        '"localhost:50051"': repr(server.addr), '"WIDGET_KEY"': repr(tenant.api_key),
        '"https://shop.example"': repr(ORIGIN), '"demo"': repr(tenant.slug),
        '"ana@demo.example"': repr(email), '"PASSWORD"': repr(PASSWORD),
    }.items():
        assert placeholder in code, f"the README snippet lost {placeholder}"
        code = code.replace(placeholder, value)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3 * WAIT)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "place in the queue: 1"
    # The loop stops at the first message the agent's stream delivers after the join: the
    # agent's own answer.
    assert lines[-1] == "Hello Ada! Yes, we do."
    # The chat holds the visitor's question and the agent's answer, in that order.
    with AgentClient(server.addr) as agent:
        agent.login(tenant.slug, email, PASSWORD)
        (chat,) = [c.conversation for c in agent.conversations().conversations
                   if c.conversation.kind == cpb.CONVERSATION_KIND_EXTERNAL]
        texts = [m.text for m in agent.messages(chat.id)]
        assert texts.index("Hi, do you ship to Spain?") < texts.index("Hello Ada! Yes, we do.")
