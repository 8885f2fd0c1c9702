"""The next token of every row, on the device, without a host sync.

Per step: transformers' repetition penalty, the choice constraint (``hired.choices``) as a mask,
EOS barred before ``min_new_tokens``, then per distinct :class:`hired.Sampling` group the warpers
(temperature, top-k, top-p) and either argmax (greedy) or a draw from that row's own
``torch.Generator``. Rows never share a generator and a row draws exactly one number a step, so a
seeded row's tokens depend on its own logits alone: the same in any batch and on any rerun.
"""

from __future__ import annotations

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from .choices import ChoiceTrie
from .sampling import Sampling
from .transfer import to_device


class ChoiceTables:
    """The rows' tries merged into flat device tables: edges ``(node, token) -> child``; a row's
    state is its node (``-1``: free text)."""

    def __init__(self, tries: list[ChoiceTrie | None], device: torch.device):
        nodes, edge_node, edge_token, edge_child, terminal, to_finish, roots = 0, [], [], [], [], [], []
        for trie in tries:
            if trie is None:
                roots.append(-1)
                continue
            roots.append(nodes)
            for n, edges in enumerate(trie.edges):
                for token, child in edges.items():
                    edge_node.append(nodes + n)
                    edge_token.append(token)
                    edge_child.append(nodes + child)
            terminal.extend(trie.terminal)
            to_finish.extend(trie.to_finish)
            nodes += len(trie.edges)
        as_long = lambda values: to_device(torch.tensor(values, dtype=torch.long), device)  # noqa: E731
        self.edge_node, self.edge_token, self.edge_child = as_long(edge_node), as_long(edge_token), as_long(edge_child)
        self.terminal = to_device(torch.tensor(terminal, dtype=torch.bool), device)
        self.edge_to_finish = as_long(to_finish)[self.edge_child] if edge_child else as_long([])
        self.state = as_long(roots)  # (B,)
        self.constrained = self.state >= 0  # (B,)

    def mask(self, scores: torch.Tensor, remaining: int, eos: torch.Tensor) -> torch.Tensor:
        """``scores`` with every token a constrained row may not take set to -inf.

        ``remaining``: tokens the row may still generate after this one."""
        rows, vocab = scores.shape
        # (B, E): the edges leaving each row's node that can still finish a choice in time.
        leaving = (self.edge_node[None, :] == self.state[:, None]) & (self.edge_to_finish <= remaining)[None, :]
        allowed = torch.zeros(rows, vocab, device=scores.device)
        allowed.scatter_add_(1, self.edge_token.expand(rows, -1), leaving.to(allowed.dtype))
        allowed = allowed > 0
        at_terminal = self.terminal[self.state.clamp(min=0)] & self.constrained
        if eos.numel():
            allowed[:, eos] |= at_terminal[:, None]
        return scores.masked_fill(self.constrained[:, None] & ~allowed, float("-inf"))

    def advance(self, tokens: torch.Tensor) -> None:
        """Move each constrained row along the edge of the token it took (EOS leaves the trie)."""
        taken = (self.edge_node[None, :] == self.state[:, None]) & (self.edge_token[None, :] == tokens[:, None])
        child = (taken.long() * self.edge_child[None, :]).sum(dim=1)
        self.state = torch.where(self.constrained & taken.any(dim=1), child, torch.where(self.constrained, -2, -1))
        self.constrained = self.state >= 0


class TokenChooser:
    """Picks each row's next token from its logits.

    ``prompt_ids``/``prompt_mask``: ``(B, L)``, the text the repetition penalty counts (padding masked).
    """

    def __init__(
        self,
        samplings: list[Sampling],
        tries: list[ChoiceTrie | None],
        eos_ids: list[int],
        device: torch.device,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        min_new_tokens: int = 0,
    ):
        self.device = device
        self.eos = to_device(torch.tensor(sorted(eos_ids), dtype=torch.long), device)
        self.min_new_tokens = min_new_tokens
        self.choices = ChoiceTables(tries, device) if any(t is not None for t in tries) else None
        self.penalised = any(s.repetition_penalty != 1.0 for s in samplings)
        if self.penalised:
            # Padding becomes the row's last prompt token (always real when left-padded): counted once already.
            self.history = torch.where(prompt_mask.bool(), prompt_ids, prompt_ids[:, -1:]).to(device)
        self.groups = []  # (rows as a device index, Sampling without seed, processors, warpers)
        by_setting: dict[tuple, list[int]] = {}
        for row, s in enumerate(samplings):
            by_setting.setdefault((s.temperature, s.top_p, s.top_k, s.repetition_penalty), []).append(row)
        for (temperature, top_p, top_k, penalty), rows in by_setting.items():
            processors = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(float(penalty))] if penalty != 1.0 else [])
            warpers = LogitsProcessorList()
            if temperature > 0:
                if temperature != 1.0:
                    warpers.append(TemperatureLogitsWarper(float(temperature)))
                if top_k is not None:
                    warpers.append(TopKLogitsWarper(top_k))
                if top_p is not None and top_p < 1.0:
                    warpers.append(TopPLogitsWarper(float(top_p)))
            index = to_device(torch.tensor(rows, dtype=torch.long), device)
            self.groups.append((rows, index, temperature > 0, processors, warpers))
        self.single = len(self.groups) == 1
        self.generators = {}
        for row, s in enumerate(samplings):
            if not s.greedy:
                generator = torch.Generator(device=device)
                if s.seed is None:
                    generator.seed()
                else:
                    generator.manual_seed(s.seed)
                self.generators[row] = generator

    def __call__(self, logits: torch.Tensor, step: int, max_new_tokens: int) -> torch.Tensor:
        """``(B,)`` next tokens from ``(B, V)`` logits at ``step`` (0 = the first new token)."""
        scores = logits.float()
        if self.penalised:
            scores = self._penalise(scores)
        if self.choices is not None:
            scores = self.choices.mask(scores, max_new_tokens - step - 1, self.eos)
        if step < self.min_new_tokens and self.eos.numel():
            scores[:, self.eos] = float("-inf")
        tokens = torch.empty(scores.shape[0], dtype=torch.long, device=scores.device)
        for rows, index, sampled, _, warpers in self.groups:
            group = scores if self.single else scores[index]
            if not sampled:
                picked = group.argmax(dim=-1)
            else:
                probs = torch.softmax(warpers(None, group), dim=-1)
                picked = torch.cat([
                    torch.multinomial(probs[k], 1, generator=self.generators[row]) for k, row in enumerate(rows)
                ])
            if self.single:
                tokens = picked
            else:
                tokens[index] = picked
        return tokens

    def _penalise(self, scores: torch.Tensor) -> torch.Tensor:
        if self.single:
            return self.groups[0][3](self.history, scores)
        out = scores.clone()
        for _, index, _, processors, _ in self.groups:
            if len(processors):
                out[index] = processors(self.history[index], scores[index])
        return out

    def taken(self, tokens: torch.Tensor) -> None:
        """Record the tokens the rows took (for the penalty and the choice states)."""
        if self.penalised:
            self.history = torch.cat([self.history, tokens[:, None]], dim=1)
        if self.choices is not None:
            self.choices.advance(tokens)
