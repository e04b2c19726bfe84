"""Adversarial training (PGD-AT, fast AT, TRADES, Ozdenizci and Legenstein's TRADES with R+FGSM) for ANNs and SNNs: the examples are adversarial, the recipe is in
the model's cache key, a resumed run equals an uninterrupted one, and PGD-AT buys robustness a paired test sees."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from conftest import loader
from snn_adv import evaluate
from snn_adv.adversarial_training import TRADES_METHODS, AdversarialTraining
from snn_adv.attacks import PGD
from snn_adv.config import ConfigError, load_config
from snn_adv.configs import config_path
from snn_adv.distributed import distributed_loader
from snn_adv.models import build_classifier, get_thresholds
from snn_adv.evaluation import compare
from snn_adv.training import train
from snn_adv.zoo import ModelZoo

EPS = 0.1  # Fashion-MNIST's customary radius


@pytest.mark.parametrize("method", ["pgd", "fast", "trades", "trades-rfgsm"])
def test_the_training_examples_are_adversarial_for_the_ann_and_the_snn(trained_pair, method):
    """The objective each method ascends (cross-entropy; TRADES: KL from the clean prediction) is higher at the
    crafted examples than at the clean images and than at random points of the same ball (on the same draw)."""
    recipe = AdversarialTraining(method, eps=EPS)
    x, y = trained_pair.x[:64], trained_pair.y[:64]
    trained_pair.snn.timesteps = 16
    noise = x + EPS * (2 * torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(0)) - 1)
    for model in (trained_pair.ann, trained_pair.snn):
        model.train()
        crafted = recipe.craft(model, x, y)
        assert model.training  # its mode came back
        assert (crafted - x).abs().max() <= EPS + 1e-6 and crafted.min() >= 0 and crafted.max() <= 1
        model.eval()
        with torch.no_grad():
            torch.manual_seed(0)
            clean = model(x)

            def objective(images):
                torch.manual_seed(0)  # the clean pass's Poisson draw
                logits = model(images)
                if method not in TRADES_METHODS:
                    return F.cross_entropy(logits, y)
                return F.kl_div(F.log_softmax(logits, 1), F.softmax(clean, 1), reduction="batchmean")

            values = {"clean": objective(x), "random": objective(noise.clamp(0, 1)), "crafted": objective(crafted)}
        assert values["crafted"] > max(values["clean"], values["random"]), (type(model).__name__, values)


def test_the_methods_follow_their_papers_defaults_and_refuse_nonsense():
    assert (AdversarialTraining("pgd").alpha, AdversarialTraining("pgd").steps) == (2 / 255, 7)
    fast = AdversarialTraining("fast", eps=8 / 255)
    assert fast.alpha == pytest.approx(1.25 * 8 / 255) and fast.steps == 1
    trades = AdversarialTraining("trades")
    assert (trades.alpha, trades.steps, trades.beta) == (2 / 255, 10, 6.0)
    rfgsm = AdversarialTraining("trades-rfgsm", eps=2 / 255)  # Ozdenizci and Legenstein's training radius
    assert (rfgsm.alpha, rfgsm.steps, rfgsm.beta) == (pytest.approx(1 / 255), 1, 2.0)
    with pytest.raises(ValueError, match="R\\+FGSM"):
        AdversarialTraining("trades-rfgsm", steps=3)
    with pytest.raises(ValueError, match="R\\+FGSM"):
        AdversarialTraining("trades-rfgsm", eps=0.1, alpha=0.1)
    with pytest.raises(ValueError, match="only TRADES"):
        AdversarialTraining("pgd", beta=1.0)
    with pytest.raises(ValueError, match="unknown key"):
        AdversarialTraining.from_spec({"method": "pgd", "epsilon": 0.1})
    with pytest.raises(ValueError, match="method"):
        AdversarialTraining("free")
    with pytest.raises(ValueError, match="grad_mode"):  # refused when the recipe is read, not after an epoch
        AdversarialTraining("pgd", grad_mode="bptt2")


def test_trades_loss_is_clean_cross_entropy_plus_beta_kl(trained_pair):
    ann = trained_pair.ann
    x, y = trained_pair.x[:16], trained_pair.y[:16]
    recipe = AdversarialTraining("trades", eps=EPS, beta=3.0)
    crafted = recipe.craft(ann, x, y)
    loss, logits = recipe.loss(ann, x, y, crafted)
    p, q = F.softmax(ann(x), 1), F.softmax(ann(crafted), 1)
    by_hand = F.cross_entropy(ann(x), y, reduction="sum") + 3.0 * (p * (p.log() - q.log())).sum()
    assert torch.allclose(loss, by_hand, rtol=1e-4) and torch.equal(logits, ann(x))


def test_trades_rfgsm_crafts_a_random_sign_step_then_one_kl_gradient_sign_step(trained_pair):
    """Against R+FGSM written out by hand on the deterministic ANN, from the same random stream."""
    ann = trained_pair.ann.eval()
    x, y = trained_pair.x[:16], trained_pair.y[:16]
    recipe = AdversarialTraining("trades-rfgsm", eps=EPS)
    torch.manual_seed(7)
    crafted = recipe.craft(ann, x, y)
    torch.manual_seed(7)
    seed = int(torch.randint(0, 2**62, (1,)))  # what craft draws for the attack's generator
    start = (x + EPS / 2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).sign()).clamp(0, 1)
    start.requires_grad_(True)
    with torch.no_grad():
        clean = F.softmax(ann(x), 1)
    kl = F.kl_div(F.log_softmax(ann(start), 1), clean, reduction="sum")
    (grad,) = torch.autograd.grad(kl, start)
    by_hand = torch.min(torch.max(start.detach() + EPS / 2 * grad.sign(), x - EPS), x + EPS).clamp(0, 1)
    torch.testing.assert_close(crafted, by_hand)
    assert not torch.equal(crafted, start.detach()) and (crafted - x).abs().max() <= EPS + 1e-6


def test_the_recipe_is_in_the_model_cache_key_and_checked_at_load(tmp_path):
    plain = load_config(config_path("tiny"))
    defended = load_config(config_path("tiny"), {"models": {"ann": {"adversarial": {"method": "pgd", "eps": EPS}}}})
    keys = [ModelZoo(config, tmp_path).key(kind) for config in (plain, defended) for kind in ("ann", "snn_bp")]
    assert keys[0] != keys[2] and keys[1] != keys[3]  # the SNN-BP converted from a defended ANN is another model
    with pytest.raises(ConfigError, match="models.ann.adversarial.method"):
        load_config(config_path("tiny"), {"models": {"ann": {"adversarial": {"method": "free"}}}})


def test_a_killed_adversarial_training_resumes_to_the_same_weights(fmnist, tmp_path):
    dataset = TensorDataset(fmnist.train_x[:96], fmnist.train_y[:96])
    recipe = {"method": "fast", "eps": EPS}

    def run(checkpoint=None, stop_after=None):
        torch.manual_seed(5)
        model = build_classifier("vgg-tiny", "fashion-mnist-bundled")
        data, sampler = distributed_loader(dataset, 32, seed=3)

        def stop(record):
            if record["epoch"] == stop_after:
                raise KeyboardInterrupt

        history = train(model, data, epochs=3, seed=1, progress=False, checkpoint=checkpoint, adversarial=recipe,
                        on_epoch_start=lambda epoch: sampler.set_epoch(epoch - 1), on_epoch_end=stop)
        return model, history

    reference, reference_history = run()
    state = tmp_path / "ann.pt.partial"
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint=state, stop_after=1)
    resumed, history = run(checkpoint=state)
    assert history == reference_history
    assert all(torch.equal(a, b) for a, b in zip(reference.parameters(), resumed.parameters()))
    with pytest.raises(ValueError, match="other training arguments"):
        train(build_classifier("vgg-tiny", "fashion-mnist-bundled"), distributed_loader(dataset, 32, seed=3)[0],
              epochs=3, seed=1, progress=False, checkpoint=state, adversarial={**recipe, "eps": 0.05})


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_mixed_precision_crafts_the_adversarial_examples_under_autocast_too(fmnist, precision):
    """Under ``precision='bfloat16'`` the attack's forwards (the model in eval mode) run under autocast like the
    training forward; under float32 none does; the examples stay float32 either way."""
    torch.manual_seed(0)
    model = build_classifier("vgg-tiny", "fashion-mnist-bundled")
    seen = []  # (training mode, autocast on) of every forward
    model.register_forward_pre_hook(
        lambda module, args: seen.append((module.training, torch.is_autocast_enabled("cpu"))))
    crafted = []
    recipe = AdversarialTraining("pgd", eps=EPS, steps=2)
    original = AdversarialTraining.craft

    def spy(self, *args):
        crafted.append(original(self, *args))
        return crafted[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AdversarialTraining, "craft", spy)
        train(model, loader(fmnist.train_x[:32], fmnist.train_y[:32], 32), epochs=1, seed=1, progress=False,
              precision=precision, adversarial=recipe)
    attack_forwards = [autocast for training, autocast in seen if not training]
    assert len(attack_forwards) >= 2 and set(attack_forwards) == {precision == "bfloat16"}
    assert {autocast for training, autocast in seen if training} == {precision == "bfloat16"}
    assert crafted and all(x.dtype == torch.float32 for x in crafted)


def test_pgd_at_keeps_significantly_more_under_pgd_than_its_plain_twin(fmnist):
    models = {}
    for name, adversarial in (("plain", None), ("pgd-at", {"method": "pgd", "eps": EPS, "alpha": 0.025, "steps": 5})):
        torch.manual_seed(0)
        model = build_classifier("vgg-tiny", "fashion-mnist-bundled")
        train(model, loader(fmnist.train_x, fmnist.train_y, 32, shuffle=True), epochs=2, optimizer="adam", lr=3e-3,
              seed=0, progress=False, adversarial=adversarial)
        models[name] = model.eval()
    x, y = fmnist.test_x[:200], fmnist.test_y[:200]
    results = {name: evaluate(model, (x, y), PGD(model, eps=EPS, alpha=0.025, steps=10), progress=False)
               for name, model in models.items()}
    gain = compare(results["pgd-at"], results["plain"], alternative="greater")
    assert gain.significant() and gain.difference > 0.2, (gain, {k: r.adversarial_accuracy for k, r in results.items()})


def test_a_robust_hybrid_snn_is_converted_from_a_defended_ann_and_finetuned_adversarially(tmp_path, monkeypatch):
    """The zoo composes them: models.ann.adversarial and models.snn_bp.adversarial (tiny preset)."""
    from snn_adv.classifier import SpikingClassifier

    crafted_on = []
    real = AdversarialTraining.craft
    monkeypatch.setattr(AdversarialTraining, "craft",
                        lambda self, model, x, y: crafted_on.append((type(model), self.method)) or real(self, model, x, y))
    config = load_config(config_path("tiny"), {"models": {"ann": {"adversarial": {"method": "fast", "eps": EPS}},
                                                          "snn_bp": {"adversarial": {"method": "pgd", "eps": EPS,
                                                                                     "steps": 2, "eot": 2}}}})
    zoo = ModelZoo(config, tmp_path, progress=False)
    snn_bp = zoo.get("snn_bp")
    assert isinstance(snn_bp, SpikingClassifier)
    kinds = {(kind.__name__, method) for kind, method in crafted_on}
    assert kinds == {("AnnClassifier", "fast"), ("SpikingClassifier", "pgd")}
    assert zoo.recipe("snn_bp")["adversarial"]["eot"] == 2 and zoo.recipe("snn_bp")["from"]["from"]["adversarial"]


def test_robust_conversion_finetunes_thresholds_and_weights_adversarially(tmp_path):
    """Ozdenizci and Legenstein's recipe through the zoo (tiny preset): the SNN-BP's thresholds are trained with its
    weights under TRADES with R+FGSM, are part of the model's key, and come back trainable from the cache."""
    recipe = {"learnable_thresholds": True, "adversarial": {"method": "trades-rfgsm", "eps": EPS}}
    config = load_config(config_path("tiny"), {"models": {"snn_bp": recipe}})
    zoo = ModelZoo(config, tmp_path, progress=False)
    assert zoo.key("snn_bp") != ModelZoo(load_config(config_path("tiny"), {"models": {"snn_bp": {
        "adversarial": recipe["adversarial"]}}}), tmp_path).key("snn_bp")
    scale = zoo.recipe("snn_bp").get("threshold_scale", 0.7)
    start = [scale * t for t in get_thresholds(zoo.get("snn_conv").body)]
    trained = zoo.get("snn_bp")
    moved = [abs(n.v_threshold - t) / t for n, t in zip(trained.neurons(), start)]
    assert all(n.learnable_threshold for n in trained.neurons()) and min(moved) > 1e-4, moved
    cached = ModelZoo(config, tmp_path, progress=False).get("snn_bp")
    assert [n.v_threshold for n in cached.neurons()] == [n.v_threshold for n in trained.neurons()]
    assert all(n.learnable_threshold for n in cached.neurons())
