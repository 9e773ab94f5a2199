"""FAQ grounding: the retrieval run's top entries go into the system message of a generator's prompt."""

from domaintune.generation.grounding import GROUNDING_HEADER, ground


class FaqRun:
    """What `ground` reads from a retrieval run's Predictor: predict([query], top_k) -> [{"top_k": hits}]."""

    def __init__(self):
        self.queries = []

    def predict(self, texts, top_k=1):
        self.queries.append((texts, top_k))
        hits = [{"id": "2", "question": "如何退货？", "answer": "七天内在订单页申请退货。", "score": 0.9},
                {"id": "5", "question": "运费谁付？", "answer": "质量问题由我们承担运费。", "score": 0.7}]
        return [{"top_k": hits[:top_k]}]


def test_hits_become_the_system_message_for_the_last_user_turn():
    faq = FaqRun()
    msgs = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "您好"},
            {"role": "user", "content": "我想退货"}]
    out = ground(msgs, faq, top_k=2)
    assert faq.queries == [(["我想退货"], 2)]
    assert out[0]["role"] == "system" and out[0]["content"].startswith(GROUNDING_HEADER)
    assert "1. Q: 如何退货？\n   A: 七天内在订单页申请退货。" in out[0]["content"] and "2. Q: 运费谁付？" in out[0]["content"]
    assert out[1:] == msgs


def test_an_existing_system_message_is_kept_first_and_nothing_without_an_index():
    msgs = [{"role": "system", "content": "You are ACME support."}, {"role": "user", "content": "refund?"}]
    out = ground(msgs, FaqRun(), top_k=1)
    assert out[0]["content"].startswith("You are ACME support.\n\n" + GROUNDING_HEADER) and len(out) == 2
    assert ground(msgs, None) is msgs
