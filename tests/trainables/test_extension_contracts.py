"""One contract per extension interface, run against every implementation (Optuna's
BasicSamplerTestCase habit); gradient surgery has its own in test_surgery.py."""

from __future__ import annotations

import random

import pytest
import torch

from trainables.errors import ConfigError
from trainables.minbert.batching import EncodedSplit
from trainables.minbert.config import TrialConfig, load_trial_config
from trainables.minbert.encoder import build_encoder
from trainables.minbert.extensions import registry
from trainables.minbert.extensions.cosine_sts import CosineSimilarity
from trainables.minbert.extensions.llrd import LayerwiseLrDecay
from trainables.minbert.extensions.loss_terms import (
    LossTerm,
    RandomState,
    TaskOutput,
    make_loss_terms,
)
from trainables.minbert.extensions.lr_schedule import WarmupDecay
from trainables.minbert.extensions.mnrl import MultipleNegativesRanking
from trainables.minbert.extensions.optimization import (
    ConstantLr,
    LrSchedule,
    ParamGroups,
    SingleGroup,
    make_lr_schedule,
    make_param_groups,
    optimizer_param_groups,
)
from trainables.minbert.extensions.pair_similarity import (
    PairHead,
    PairSimilarity,
    make_pair_similarity,
)
from trainables.minbert.extensions.phases import (
    MultitaskOnly,
    MultitaskPhase,
    Phase,
    PhasePlan,
    make_phase_plan,
    make_phases,
)
from trainables.minbert.extensions.sampling import CycleSampler, ProportionalSampler, TaskSampler
from trainables.minbert.extensions.sequential_sts import SequentialSts
from trainables.minbert.extensions.smart import Smart
from trainables.minbert.extensions.surgery import GradientSurgery
from trainables.minbert.extensions.task_layers import (
    TaskLayers,
    TaskTopLayers,
    make_task_layers,
)
from trainables.minbert.hf_folder import minilm_dir
from trainables.minbert.model import BertConfig, BertModel
from trainables.minbert.multitask import MultitaskBert, task_loss
from trainables.minbert.tokenizer import WordPieceTokenizer

TASKS = ("sst", "para", "sts")


def _cfg(*overrides: str) -> TrialConfig:
    return load_trial_config(None, list(overrides))


# ------------------------------------------------------------------ TaskSampler
@pytest.fixture(params=[CycleSampler, ProportionalSampler], ids=["cycle", "proportional"])
def sampler(request: pytest.FixtureRequest) -> TaskSampler:
    made: TaskSampler = request.param()
    return made


class TestTaskSamplerContract:
    SIZES = {"sst": 4, "para": 9, "sts": 2, "empty": 0}

    def test_seeded_determinism(self, sampler: TaskSampler) -> None:
        first = sampler.epoch(self.SIZES, random.Random(5))
        assert first == sampler.epoch(self.SIZES, random.Random(5))

    def test_every_task_with_batches_appears_and_no_other(self, sampler: TaskSampler) -> None:
        plan = sampler.epoch(self.SIZES, random.Random(1))
        seen = {task for step in plan for task in step}
        assert seen == {"sst", "para", "sts"}
        assert all(step and len(set(step)) == len(step) for step in plan)

    def test_independent_of_dict_order(self, sampler: TaskSampler) -> None:
        reversed_sizes = dict(reversed(list(self.SIZES.items())))
        assert sampler.epoch(self.SIZES, random.Random(2)) == sampler.epoch(
            reversed_sizes, random.Random(2)
        )


# ------------------------------------------------------------------ PhasePlan
def _multitask(cfg: TrialConfig) -> Phase:
    train = cfg.train
    return MultitaskPhase(CycleSampler(), TASKS, train.epochs, train.evals_per_epoch, train.seed)


PLANS = {
    "multitask_only": lambda: (MultitaskOnly(), _cfg()),
    "sequential_sts": lambda: (
        SequentialSts(
            _cfg("extensions.sequential_sts=true", "extensions.sequential_sts_epochs=2")
        ),
        _cfg("extensions.sequential_sts=true", "extensions.sequential_sts_epochs=2"),
    ),
}


@pytest.fixture(params=sorted(PLANS))
def plan_and_cfg(request: pytest.FixtureRequest) -> tuple[PhasePlan, TrialConfig]:
    plan, cfg = PLANS[request.param]()
    return plan, cfg


class TestPhasePlanContract:
    def test_is_a_phase_plan_built_from_its_toggle(
        self, plan_and_cfg: tuple[PhasePlan, TrialConfig]
    ) -> None:
        plan, cfg = plan_and_cfg
        assert isinstance(plan, PhasePlan)
        assert type(make_phase_plan(cfg)) is type(plan)

    def test_keeps_the_multitask_phase_once_and_names_are_unique(
        self, plan_and_cfg: tuple[PhasePlan, TrialConfig]
    ) -> None:
        plan, cfg = plan_and_cfg
        multitask = _multitask(cfg)
        phases = plan.phases(multitask)
        assert [p for p in phases if p is multitask] == [multitask]
        names = [p.name for p in phases]
        assert len(set(names)) == len(names) and all(names)
        again = plan.phases(multitask)  # no state: the same phases every time
        assert [(p.name, p.tasks, p.epochs) for p in again] == [
            (p.name, p.tasks, p.epochs) for p in phases
        ]

    def test_every_phase_plans_seeded_epochs_over_its_own_tasks(
        self, plan_and_cfg: tuple[PhasePlan, TrialConfig]
    ) -> None:
        plan, cfg = plan_and_cfg
        for phase in plan.phases(_multitask(cfg)):
            assert phase.epochs >= 1 and phase.tasks and set(phase.tasks) <= set(TASKS)
            sizes = {t: 3 + k for k, t in enumerate(phase.tasks)}
            steps = phase.epoch_plan(sizes, 0)
            assert steps and steps == phase.epoch_plan(sizes, 0)
            assert {t for step in steps for t in step} <= set(phase.tasks)
            points = phase.eval_points(len(steps))
            assert points and all(1 <= p <= len(steps) for p in points)

    def test_make_phases_ends_with_the_multitask_loop(
        self, plan_and_cfg: tuple[PhasePlan, TrialConfig]
    ) -> None:
        _, cfg = plan_and_cfg
        phases = make_phases(cfg, TASKS)
        assert isinstance(phases[-1], MultitaskPhase) and phases[-1].tasks == TASKS
        assert [p.counts_toward_max_steps for p in phases].count(True) == 1


def test_sequential_sts_puts_sts_only_epochs_first() -> None:
    phases = make_phases(_cfg("extensions.sequential_sts=true"), TASKS)
    assert [(p.name, p.tasks, p.epochs) for p in phases] == [
        ("sequential", ("sts",), 1),
        ("multitask", TASKS, 1),
    ]


# ------------------------------------------------------------------ PairSimilarity
HEADS = {
    "linear_siamese": lambda: PairHead(8, siamese=True),
    "linear_cross": lambda: PairHead(8, siamese=False),
    "cosine": lambda: CosineSimilarity(_cfg("extensions.cosine_sts=true")),
}


@pytest.fixture(params=sorted(HEADS))
def head(request: pytest.FixtureRequest) -> PairSimilarity:
    made: PairSimilarity = HEADS[request.param]()
    return made


class TestPairSimilarityContract:
    def _inputs(self, head: PairSimilarity) -> tuple[torch.Tensor, torch.Tensor | None]:
        gen = torch.Generator().manual_seed(0)
        u = torch.randn(5, 8, generator=gen, requires_grad=True)
        siamese = not isinstance(head, PairHead) or head.siamese
        return u, torch.randn(5, 8, generator=gen) if siamese else None

    def test_one_finite_score_per_pair(self, head: PairSimilarity) -> None:
        head.init_weights(0.02)
        scores = head(*self._inputs(head))
        assert scores.shape == (5,) and bool(torch.isfinite(scores).all())

    def test_scores_depend_on_the_embeddings(self, head: PairSimilarity) -> None:
        u, v = self._inputs(head)
        head(u, v).sum().backward()
        assert u.grad is not None and bool(u.grad.abs().sum() > 0)

    def test_says_whether_dropout_comes_first(self, head: PairSimilarity) -> None:
        assert isinstance(head.dropout_before, bool)


def test_make_pair_similarity_picks_the_toggled_head() -> None:
    assert isinstance(
        make_pair_similarity(_cfg("extensions.cosine_sts=true"), 8), CosineSimilarity
    )
    default = make_pair_similarity(_cfg(), 8)
    assert isinstance(default, PairHead) and default.siamese and default.dropout_before
    cross = make_pair_similarity(_cfg("model.pair_encoding=cross"), 8)
    assert isinstance(cross, PairHead) and not cross.siamese
    assert not CosineSimilarity().dropout_before  # no parameters to regularise


def test_a_factory_of_the_wrong_interface_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg("extensions.pcgrad=true")
    monkeypatch.setattr(registry, "load_factory", lambda toggle: CosineSimilarity)
    with pytest.raises(ConfigError, match="not the GradientSurgery"):
        registry.build_active("surgery", cfg, GradientSurgery)
    assert registry.active_toggle("surgery", cfg.to_flat_dict()) is not None
    assert registry.active_toggle("phases", cfg.to_flat_dict()) is None


# ------------------------------------------------------------------ ParamGroups
TINY_BERT = ["model.checkpoint=random", "model.hidden_size=16", "model.num_layers=2"]
GROUPINGS = {
    "single": lambda: (SingleGroup(), _cfg()),
    "llrd": lambda: (
        LayerwiseLrDecay(_cfg("extensions.llrd=true")),
        _cfg("extensions.llrd=true"),
    ),
}


@pytest.fixture(params=sorted(GROUPINGS))
def grouping_and_cfg(request: pytest.FixtureRequest) -> tuple[ParamGroups, TrialConfig]:
    grouping, cfg = GROUPINGS[request.param]()
    return grouping, cfg


class TestParamGroupsContract:
    def test_is_param_groups_built_from_its_toggle(
        self, grouping_and_cfg: tuple[ParamGroups, TrialConfig]
    ) -> None:
        grouping, cfg = grouping_and_cfg
        assert isinstance(grouping, ParamGroups)
        assert type(make_param_groups(cfg)) is type(grouping)

    def test_every_trainable_parameter_once_at_a_rate_up_to_train_lr(
        self, grouping_and_cfg: tuple[ParamGroups, TrialConfig]
    ) -> None:
        grouping, _ = grouping_and_cfg
        torch.manual_seed(0)
        _, encoder = build_encoder(_cfg(*TINY_BERT))
        model = MultitaskBert(encoder, 0.1, freeze_word_embeddings=True)
        groups = optimizer_param_groups(grouping, model, 1e-3, 0.01)  # checks the cover
        in_groups = [p for g in groups for p in g["params"]]
        assert len(in_groups) == len({id(p) for p in in_groups})
        assert {id(p) for p in in_groups} == {id(p) for p in model.parameters() if p.requires_grad}
        assert groups[0]["lr"] == 1e-3  # the heads' rate, which the trainer logs, is train.lr
        assert all(0 < g["lr"] <= 1e-3 and g["weight_decay"] == 0.01 for g in groups)
        again = optimizer_param_groups(grouping, model, 1e-3, 0.01)  # no state: the same
        assert [(g["lr"], len(g["params"])) for g in again] == [
            (g["lr"], len(g["params"])) for g in groups
        ]


# ------------------------------------------------------------------ LrSchedule
SCHEDULES = {
    "constant": lambda: (ConstantLr(), _cfg()),
    "linear": lambda: (
        WarmupDecay(_cfg("extensions.lr_schedule=true")),
        _cfg("extensions.lr_schedule=true"),
    ),
    "cosine": lambda: (
        WarmupDecay(_cfg("extensions.lr_schedule=true", "extensions.lr_schedule_decay=cosine")),
        _cfg("extensions.lr_schedule=true", "extensions.lr_schedule_decay=cosine"),
    ),
}


@pytest.fixture(params=sorted(SCHEDULES))
def schedule_and_cfg(request: pytest.FixtureRequest) -> tuple[LrSchedule, TrialConfig]:
    schedule, cfg = SCHEDULES[request.param]()
    return schedule, cfg


class TestLrScheduleContract:
    def test_is_a_schedule_built_from_its_toggle(
        self, schedule_and_cfg: tuple[LrSchedule, TrialConfig]
    ) -> None:
        schedule, cfg = schedule_and_cfg
        assert isinstance(schedule, LrSchedule)
        assert type(make_lr_schedule(cfg)) is type(schedule)

    @pytest.mark.parametrize("total", [1, 2, 7, 100])
    def test_multipliers_in_0_1_reach_1_and_depend_on_the_step_alone(
        self, schedule_and_cfg: tuple[LrSchedule, TrialConfig], total: int
    ) -> None:
        schedule, _ = schedule_and_cfg
        steps = [schedule.multiplier(s, total) for s in range(total)]
        assert all(0.0 <= m <= 1.0 for m in steps) and max(steps) == 1.0
        assert steps == [schedule.multiplier(s, total) for s in range(total)]
        assert all(m == 1.0 for m in steps) or not schedule.constant


# ------------------------------------------------------------------ LossTerm
LOSS_TERMS = {
    "mnrl": (MultipleNegativesRanking, ["extensions.mnrl=true"]),
    "smart": (Smart, ["extensions.smart=true", "extensions.smart_epsilon=0.05"]),
}


@pytest.fixture(params=sorted(LOSS_TERMS))
def loss_term(request: pytest.FixtureRequest) -> LossTerm:
    kind, overrides = LOSS_TERMS[request.param]
    (built,) = make_loss_terms(_cfg(*overrides))
    assert type(built) is kind
    return built


@pytest.fixture(scope="module")
def term_model_and_batches() -> tuple[MultitaskBert, dict[str, dict]]:
    tokenizer = WordPieceTokenizer.from_checkpoint(minilm_dir())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        intermediate_size=32,
    )
    torch.manual_seed(0)
    model = MultitaskBert(BertModel.from_config(config, seed=0), 0.1).train()
    texts = ["A dog runs.", "Why is the sky blue?", "The cat sat on the mat.", "Is it?"]
    first, second = tokenizer.encode(texts, 16), tokenizer.encode(texts[::-1], 16)
    ids = [str(i) for i in range(4)]
    labels = {
        "sst": torch.tensor([0, 4, 2, 1]),
        "para": torch.tensor([1, 0, 1, 0]),
        "sts": torch.tensor([4.5, 1.0, 5.0, 2.0]),
    }
    splits = {
        "sst": EncodedSplit("sst", "train", ids, labels["sst"], tokens=first),
        **{
            t: EncodedSplit(t, "train", ids, labels[t], tokens_a=first, tokens_b=second)
            for t in ("para", "sts")
        },
    }
    layout = {"sst": "sides", "para": "sentences", "sts": "sides"}
    return model, {
        t: s.make_batch(range(4), tokenizer, layout[t])  # type: ignore[arg-type]
        for t, s in splits.items()
    }


@pytest.mark.usefixtures("torch_one_thread")
class TestLossTermContract:
    def test_names_its_tasks_and_its_log_key(self, loss_term: LossTerm) -> None:
        assert loss_term.tasks and loss_term.tasks <= set(TASKS)
        assert loss_term.name.isidentifier() and loss_term.name.islower()
        assert isinstance(loss_term.replays_dropout, bool)

    def test_adds_a_finite_scalar_to_its_tasks_and_nothing_to_the_others(
        self, loss_term: LossTerm, term_model_and_batches: tuple[MultitaskBert, dict[str, dict]]
    ) -> None:
        model, batches = term_model_and_batches
        for task, batch in batches.items():
            values: dict[str, torch.Tensor] = {}
            torch.manual_seed(1)
            total = model.loss(batch, [loss_term], values)
            torch.manual_seed(1)
            plain = task_loss(batch, model(batch))
            if task not in loss_term.tasks:
                assert values == {} and torch.equal(total, plain)
                continue
            value = values[f"{loss_term.name}_{task}"]
            assert value.shape == () and bool(torch.isfinite(value)) and not value.requires_grad
            assert total.item() == pytest.approx(plain.item() + value.item(), rel=1e-5)

    def test_its_gradient_reaches_the_shared_encoder(
        self, loss_term: LossTerm, term_model_and_batches: tuple[MultitaskBert, dict[str, dict]]
    ) -> None:
        model, batches = term_model_and_batches
        for task in sorted(loss_term.tasks):
            state = RandomState(torch.device("cpu"))  # before the forward, as the model does
            preds, embeddings = model.forward_with_embeddings(batches[task])
            out = TaskOutput(batches[task], preds, embeddings, state)
            value = loss_term(model, out)
            assert value is not None
            grads = torch.autograd.grad(value, model.shared_parameters(), allow_unused=True)
            assert any(g is not None and bool(g.abs().sum() > 0) for g in grads), task


# ------------------------------------------------------------------ TaskLayers
TASK_LAYERS = {
    "top_1": lambda: TaskTopLayers(_cfg("extensions.task_layers=true")),
    "top_all": lambda: TaskTopLayers(
        _cfg("extensions.task_layers=true", "extensions.task_layers_count=2")
    ),
}
TASK_LAYER_ENCODER = BertConfig(
    vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32
)


@pytest.fixture(params=sorted(TASK_LAYERS))
def task_layers(request: pytest.FixtureRequest) -> TaskLayers:
    made: TaskLayers = TASK_LAYERS[request.param]()
    return made


class TestTaskLayersContract:
    def test_is_made_by_its_toggle(self, task_layers: TaskLayers) -> None:
        assert isinstance(task_layers, TaskLayers)
        assert type(make_task_layers(_cfg("extensions.task_layers=true"))) is type(task_layers)
        assert make_task_layers(_cfg()) is None

    def test_keeps_the_shape_and_gives_each_task_parameters_of_its_own(
        self, task_layers: TaskLayers
    ) -> None:
        model = MultitaskBert(
            BertModel.from_config(TASK_LAYER_ENCODER, seed=0), 0.1, task_layers=task_layers
        )
        shared = {id(p) for p in model.shared_parameters()}
        own = {
            t: {id(p) for n, p in task_layers.named_parameters() if f".{t}." in f".{n}"}
            for t in TASKS
        }
        assert all(own[t] for t in TASKS) and not shared & set().union(*own.values())
        assert sum(len(s) for s in own.values()) == len(list(task_layers.parameters()))
        hidden = torch.randn(3, 5, 16, requires_grad=True)
        for task in TASKS:
            task_layers.zero_grad(set_to_none=True)
            out = task_layers(task, hidden, None)
            assert out.shape == hidden.shape and bool(torch.isfinite(out).all())
            out.sum().backward()
            reached = {id(p) for p in task_layers.parameters() if p.grad is not None}
            assert reached == own[task], task  # a task's gradient stays in its own layers

    def test_every_parameter_is_shared_or_one_task_s(self, task_layers: TaskLayers) -> None:
        model = MultitaskBert(
            BertModel.from_config(TASK_LAYER_ENCODER, seed=0), 0.1, task_layers=task_layers
        )
        heads = [model.sst_head, model.para_head, model.sts_head]
        parts = [
            {id(p) for p in model.shared_parameters()},
            {id(p) for p in task_layers.parameters()},
            {id(p) for h in heads for p in h.parameters()},
        ]
        assert sum(len(s) for s in parts) == len(set().union(*parts))
        assert set().union(*parts) == {id(p) for p in model.parameters()}
