"""The embedded teacher's answers are made of the world's words: the check of every answer, fresh or cached.

The teacher writes only words of its world (names, facts, its style phrases, the skill words), and the
world's tokenizer is word-level, trained on that world's texts.  So an answer holding a word the
tokenizer does not know, in any case (the teacher capitalises a topic that opens a sentence:
"Winter is ..."), or a special token (``<eos>``, ``<unk>``, a role marker) is no answer of this teacher,
whatever its opener: ``Certainly! qq qq <eos> lorem @@`` is refused.
"""

from __future__ import annotations


def vocabulary_problem(tok, text: str) -> str | None:
    """``control_token`` if ``text`` holds a special token of the world's tokenizer ``tok``,
    ``outside_vocabulary`` if it holds a word ``tok`` does not know (in any case); else None."""
    if any(s in text for s in tok.all_special_tokens):
        return "control_token"
    vocab = tok.get_vocab()
    pieces = tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)
    for word, _ in pieces:
        if word not in vocab and word.lower() not in vocab and word.capitalize() not in vocab:
            return "outside_vocabulary"
    return None
