"""The chunked loss equals transformers' full-logits loss, value and gradients."""

import pytest
import torch

from lorakit.data.tokenize import IGNORE_INDEX
from lorakit.train.loss import chunked_lm_loss

from conftest import ARCHITECTURES, make_model


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("chunk_tokens", [3, 1024])
@pytest.mark.parametrize("frozen_head", [True, False], ids=["fused-frozen-head", "checkpointed-trainable-head"])
def test_chunked_loss_matches_full_logits_loss_and_gradients(architecture, chunk_tokens, frozen_head):
    torch.manual_seed(1)
    input_ids = torch.randint(6, 100, (2, 24))
    labels = input_ids.clone()
    labels[:, :10] = IGNORE_INDEX
    labels[1, 20:] = IGNORE_INDEX

    reference = make_model(architecture, 106)
    model = make_model(architecture, 106)
    if frozen_head:  # LoRA's case: the (often tied) LM head is frozen
        for m in (reference, model):
            m.lm_head.weight.requires_grad_(False)
    expected = reference(input_ids=input_ids, labels=labels).loss
    expected.backward()

    outputs = model(input_ids=input_ids, output_hidden_states=True, logits_to_keep=1)
    loss = chunked_lm_loss(outputs.hidden_states[-1], labels, model.get_output_embeddings(),
                           softcap=getattr(model.config, "final_logit_softcapping", None), chunk_tokens=chunk_tokens)
    loss.backward()

    assert abs(loss.item() - expected.item()) < 1e-5
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        if q.grad is None:
            assert p.grad is None, name
        else:
            assert torch.allclose(p.grad, q.grad, atol=1e-5), name


def test_num_items_normalises_across_accumulation():
    hidden = torch.randn(1, 5, 8)
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, 3, IGNORE_INDEX]])
    head = torch.nn.Linear(8, 10, bias=False)
    mean = chunked_lm_loss(hidden, labels, head)
    assert torch.allclose(chunked_lm_loss(hidden, labels, head, num_items=torch.tensor(6)), mean * 3 / 6)


def test_logits_are_never_materialised_for_unsupervised_positions():
    seen = []
    head = torch.nn.Linear(8, 10, bias=False)
    head.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[0]))
    labels = torch.full((1, 100), IGNORE_INDEX)
    labels[0, 90:] = 3
    chunked_lm_loss(torch.randn(1, 100, 8, requires_grad=True), labels, head, chunk_tokens=4)
    assert sum(seen) == 10 and max(seen) == 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reused_workspace_gives_the_same_loss_and_gradients_as_a_fresh_one(dtype):
    """One LossWorkspace serves a whole run: chunks and batches of other sizes must not leak into each other."""
    from lorakit.train.loss import LossWorkspace

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 300, bias=False).to(dtype).requires_grad_(False)
    workspace = LossWorkspace()

    def loss_and_grad(tokens: int, workspace: LossWorkspace | None):
        generator = torch.Generator().manual_seed(tokens)
        hidden = torch.randn(1, tokens, 16, generator=generator).to(dtype).requires_grad_()
        labels = torch.randint(0, 300, (1, tokens), generator=generator)
        loss = chunked_lm_loss(hidden, labels, head, chunk_tokens=7, workspace=workspace)
        loss.backward()
        return loss.detach(), hidden.grad

    for tokens in (40, 5, 300, 12):
        loss, grad = loss_and_grad(tokens, workspace)
        fresh_loss, fresh_grad = loss_and_grad(tokens, None)
        assert torch.equal(loss, fresh_loss) and torch.equal(grad, fresh_grad)

    hidden = torch.randn(1, 50, 16).to(dtype)
    labels = torch.randint(0, 300, (1, 50))
    reference = torch.nn.functional.cross_entropy(head(hidden[0, :-1]).float(), labels[0, 1:])
    assert abs(chunked_lm_loss(hidden, labels, head, workspace=workspace).item() - reference.item()) < 1e-5


def test_bf16_gradient_keeps_the_target_term_of_confident_tokens():
    """softmax - one-hot is formed in fp32 before the cast: for p close to 1, p - 1 must not round to zero."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 64, bias=False).to(torch.bfloat16).requires_grad_(False)
    hidden = (torch.randn(1, 41, 16) * 40).bfloat16().requires_grad_()  # large logits: confident predictions
    labels = torch.full((1, 41), IGNORE_INDEX)
    labels[0, 1:] = head(hidden[0, :-1]).float().argmax(-1)  # each target is the model's own first choice
    loss = chunked_lm_loss(hidden, labels, head)
    loss.backward()

    reference_hidden = hidden.detach().float().requires_grad_()
    logits = (reference_hidden[0, :-1] @ head.weight.float().T).bfloat16().float()  # bf16 logits, as trained
    reference = torch.nn.functional.cross_entropy(logits, labels[0, 1:])
    reference.backward()
    assert abs(loss.item() - reference.item()) < 1e-4
    confident = torch.softmax(logits, -1).max(-1).values > 0.999
    assert confident.sum() >= 10
    for got, want in zip(hidden.grad[0, :-1][confident].float(), reference_hidden.grad[0, :-1][confident]):
        assert torch.allclose(got, want, rtol=5e-2, atol=5e-2 * want.abs().max().item())
