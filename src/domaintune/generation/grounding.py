"""Grounded answers: the top FAQ entries of a `task: retrieval` run put into a generator's prompt.

The seeds' "匹配最合适的答案模板" (match the best answer template): a support team's approved answers live in
an FAQ, and a small generator should adapt them rather than invent facts. For each request we search the FAQ
index with the user's last message (the retrieval run's own Predictor, so the same embedding model and index
as `domaintune predict` on that run) and add the hits to the system message, best first. The model was not
necessarily trained with such a system message; the report of a grounded evaluation is the way to know
whether it helps.
"""

from __future__ import annotations

GROUNDING_HEADER = "Answer the customer using the most relevant of these approved FAQ entries:"


def faq_block(hits: list[dict]) -> str:
    lines = [GROUNDING_HEADER]
    for rank, h in enumerate(hits, start=1):
        lines.append(f"{rank}. Q: {h.get('question', '')}\n   A: {h.get('answer', '')}")
    return "\n".join(lines)


def ground(messages: list[dict], faq_predictor, top_k: int = 3) -> list[dict]:
    """`messages` with the FAQ hits for the last user turn added to (or as) the system message."""
    if faq_predictor is None or top_k < 1:
        return messages
    query = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    if not query.strip():
        return messages
    hits = faq_predictor.predict([query], top_k=top_k)[0].get("top_k") or []
    if not hits:
        return messages
    block = faq_block(hits)
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{messages[0]['content']}\n\n{block}"}] + messages[1:]
    return [{"role": "system", "content": block}] + messages
