"""Multiple-choice benchmarks (MMLU, C-Eval, CMMLU): `evaluate_choice()` scores a model by log-likelihood.

`load_choice_benchmark()` reads any of the three CSV layouts (or, online, their hub copies) into one `Benchmark`.
Prompts are raw text in the original k-shot format (no chat template), as the benchmarks' own scripts and
lm-eval-harness do; the model's answer is the option whose continuation has the highest summed log-probability.
"""

from __future__ import annotations

import copy
import csv
import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorakit.errors import ConfigError, DataError

LETTERS = ("A", "B", "C", "D")
LAYOUTS = ("mmlu", "ceval", "cmmlu")
SCORINGS = ("letter", "content")
HUB_IDS = {"cais/mmlu": "mmlu", "ceval/ceval-exam": "ceval", "haonan-li/cmmlu": "cmmlu"}
_SPLITS = {"mmlu": ("dev", "val", "test"), "ceval": ("dev", "val", "test"), "cmmlu": ("dev", "test")}
_SPLIT_ALIASES = {"validation": "val", "valid": "val"}
_HEADER_COLUMNS = {"ceval": "id,question,A,B,C,D,answer", "cmmlu": ",Question,A,B,C,D,Answer"}

# Hendrycks et al.'s categories.py: subject -> subcategory -> one of four categories.
MMLU_CATEGORIES = {
    **dict.fromkeys(["abstract_algebra", "astronomy", "college_biology", "college_chemistry",
                     "college_computer_science", "college_mathematics", "college_physics", "computer_security",
                     "conceptual_physics", "electrical_engineering", "elementary_mathematics",
                     "high_school_biology", "high_school_chemistry", "high_school_computer_science",
                     "high_school_mathematics", "high_school_physics", "high_school_statistics",
                     "machine_learning"], "STEM"),
    **dict.fromkeys(["formal_logic", "high_school_european_history", "high_school_us_history",
                     "high_school_world_history", "international_law", "jurisprudence", "logical_fallacies",
                     "moral_disputes", "moral_scenarios", "philosophy", "prehistory", "professional_law",
                     "world_religions"], "humanities"),
    **dict.fromkeys(["econometrics", "high_school_geography", "high_school_government_and_politics",
                     "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology",
                     "human_sexuality", "professional_psychology", "public_relations", "security_studies",
                     "sociology", "us_foreign_policy"], "social sciences"),
    **dict.fromkeys(["anatomy", "business_ethics", "clinical_knowledge", "college_medicine", "global_facts",
                     "human_aging", "management", "marketing", "medical_genetics", "miscellaneous", "nutrition",
                     "professional_accounting", "professional_medicine", "virology"], "other"),
}

# CMMLU's src/categories.py; a subject tagged 'china specific' goes there, as in the paper's subject table.
CMMLU_CATEGORIES = {
    **dict.fromkeys(["anatomy", "astronomy", "college_actuarial_science", "college_engineering_hydrology",
                     "college_mathematics", "college_medical_statistics", "computer_science", "conceptual_physics",
                     "electrical_engineering", "elementary_mathematics", "genetics", "high_school_biology",
                     "high_school_chemistry", "high_school_mathematics", "high_school_physics", "machine_learning",
                     "virology"], "STEM"),
    **dict.fromkeys(["arts", "college_law", "global_facts", "international_law", "jurisprudence", "logical",
                     "marxist_theory", "philosophy", "professional_law", "world_history", "world_religions"],
                    "Humanities"),
    **dict.fromkeys(["business_ethics", "college_education", "economics", "education", "high_school_geography",
                     "journalism", "management", "marketing", "professional_accounting", "professional_psychology",
                     "public_relations", "security_study", "sociology"], "Social Science"),
    **dict.fromkeys(["agronomy", "clinical_knowledge", "college_medicine", "computer_security",
                     "elementary_information_and_technology", "food_science", "human_sexuality",
                     "legal_and_moral_basis", "nutrition", "professional_medicine", "sports_science"], "Other"),
    **dict.fromkeys(["ancient_chinese", "chinese_civil_service_exam", "chinese_driving_rule", "chinese_food_culture",
                     "chinese_foreign_policy", "chinese_history", "chinese_literature",
                     "chinese_teacher_qualification", "construction_project_management", "elementary_chinese",
                     "elementary_commonsense", "ethnology", "high_school_politics", "modern_chinese",
                     "traditional_chinese_medicine"], "China specific"),
}

# C-Eval's subject_mapping.json (it leaves clinical_medicine without a category; the paper puts it in Other).
CEVAL_CATEGORIES = {
    **dict.fromkeys(["computer_network", "operating_system", "computer_architecture", "college_programming",
                     "college_physics", "college_chemistry", "advanced_mathematics", "probability_and_statistics",
                     "discrete_mathematics", "electrical_engineer", "metrology_engineer", "high_school_mathematics",
                     "high_school_physics", "high_school_chemistry", "high_school_biology",
                     "middle_school_mathematics", "middle_school_biology", "middle_school_physics",
                     "middle_school_chemistry", "veterinary_medicine"], "STEM"),
    **dict.fromkeys(["college_economics", "business_administration", "marxism", "mao_zedong_thought",
                     "education_science", "teacher_qualification", "high_school_politics", "high_school_geography",
                     "middle_school_politics", "middle_school_geography"], "Social Science"),
    **dict.fromkeys(["modern_chinese_history", "ideological_and_moral_cultivation", "logic", "law",
                     "chinese_language_and_literature", "art_studies", "professional_tour_guide", "legal_professional",
                     "high_school_chinese", "high_school_history", "middle_school_history"], "Humanities"),
    **dict.fromkeys(["civil_servant", "sports_science", "plant_protection", "basic_medicine", "clinical_medicine",
                     "urban_and_rural_planner", "accountant", "fire_engineer",
                     "environmental_impact_assessment_engineer", "tax_accountant", "physician"], "Other"),
}
CATEGORIES = {"mmlu": MMLU_CATEGORIES, "cmmlu": CMMLU_CATEGORIES, "ceval": CEVAL_CATEGORIES}

SUBJECT_NAMES_ZH = {
    "cmmlu": {
        "agronomy": "农学", "anatomy": "解剖学", "ancient_chinese": "古汉语", "arts": "艺术学", "astronomy": "天文学",
        "business_ethics": "商业伦理", "chinese_civil_service_exam": "中国公务员考试",
        "chinese_driving_rule": "中国驾驶规则", "chinese_food_culture": "中国饮食文化",
        "chinese_foreign_policy": "中国外交政策", "chinese_history": "中国历史", "chinese_literature": "中国文学",
        "chinese_teacher_qualification": "中国教师资格", "clinical_knowledge": "临床知识",
        "college_actuarial_science": "大学精算学", "college_education": "大学教育学",
        "college_engineering_hydrology": "大学工程水文学", "college_law": "大学法律", "college_mathematics": "大学数学",
        "college_medical_statistics": "大学医学统计", "college_medicine": "大学医学", "computer_science": "计算机科学",
        "computer_security": "计算机安全", "conceptual_physics": "概念物理学",
        "construction_project_management": "建设工程管理", "economics": "经济学", "education": "教育学",
        "electrical_engineering": "电气工程", "elementary_chinese": "小学语文", "elementary_commonsense": "小学常识",
        "elementary_information_and_technology": "小学信息技术", "elementary_mathematics": "初等数学",
        "ethnology": "民族学", "food_science": "食品科学", "genetics": "遗传学", "global_facts": "全球事实",
        "high_school_biology": "高中生物", "high_school_chemistry": "高中化学", "high_school_geography": "高中地理",
        "high_school_mathematics": "高中数学", "high_school_physics": "高中物理学", "high_school_politics": "高中政治",
        "human_sexuality": "人类性行为", "international_law": "国际法学", "journalism": "新闻学",
        "jurisprudence": "法理学", "legal_and_moral_basis": "法律与道德基础", "logical": "逻辑学",
        "machine_learning": "机器学习", "management": "管理学", "marketing": "市场营销",
        "marxist_theory": "马克思主义理论", "modern_chinese": "现代汉语", "nutrition": "营养学", "philosophy": "哲学",
        "professional_accounting": "专业会计", "professional_law": "专业法学", "professional_medicine": "专业医学",
        "professional_psychology": "专业心理学", "public_relations": "公共关系", "security_study": "安全研究",
        "sociology": "社会学", "sports_science": "体育学", "traditional_chinese_medicine": "中医中药",
        "virology": "病毒学", "world_history": "世界历史", "world_religions": "世界宗教",
    },
    "ceval": {
        "computer_network": "计算机网络", "operating_system": "操作系统", "computer_architecture": "计算机组成",
        "college_programming": "大学编程", "college_physics": "大学物理", "college_chemistry": "大学化学",
        "advanced_mathematics": "高等数学", "probability_and_statistics": "概率统计", "discrete_mathematics": "离散数学",
        "electrical_engineer": "注册电气工程师", "metrology_engineer": "注册计量师",
        "high_school_mathematics": "高中数学", "high_school_physics": "高中物理", "high_school_chemistry": "高中化学",
        "high_school_biology": "高中生物", "middle_school_mathematics": "初中数学", "middle_school_biology": "初中生物",
        "middle_school_physics": "初中物理", "middle_school_chemistry": "初中化学", "veterinary_medicine": "兽医学",
        "college_economics": "大学经济学", "business_administration": "工商管理", "marxism": "马克思主义基本原理",
        "mao_zedong_thought": "毛泽东思想和中国特色社会主义理论体系概论", "education_science": "教育学",
        "teacher_qualification": "教师资格", "high_school_politics": "高中政治", "high_school_geography": "高中地理",
        "middle_school_politics": "初中政治", "middle_school_geography": "初中地理",
        "modern_chinese_history": "近代史纲要", "ideological_and_moral_cultivation": "思想道德修养与法律基础",
        "logic": "逻辑学", "law": "法学", "chinese_language_and_literature": "中国语言文学", "art_studies": "艺术学",
        "professional_tour_guide": "导游资格", "legal_professional": "法律职业资格", "high_school_chinese": "高中语文",
        "high_school_history": "高中历史", "middle_school_history": "初中历史", "civil_servant": "公务员",
        "sports_science": "体育学", "plant_protection": "植物保护", "basic_medicine": "基础医学",
        "clinical_medicine": "临床医学", "urban_and_rural_planner": "注册城乡规划师", "accountant": "注册会计师",
        "fire_engineer": "注册消防工程师", "environmental_impact_assessment_engineer": "环境影响评价工程师",
        "tax_accountant": "税务师", "physician": "医师资格",
    },
}


@dataclass(frozen=True)
class Question:
    """One multiple-choice question; `answer` is a letter A-D, or None where the split keeps answers private."""

    subject: str
    question: str
    options: tuple[str, ...]
    answer: str | None
    source: str  # "file:line" (or "hub-id/subject/split:row")


@dataclass(frozen=True)
class Benchmark:
    """Questions by subject: `test` holds the split being scored (whatever its name), `dev` the few-shot pool."""

    name: str
    layout: str
    dev: dict[str, list[Question]]
    test: dict[str, list[Question]]
    categories: dict[str, str]
    split: str = "test"


@dataclass
class ChoiceResult:
    """Accuracy overall, per subject and per category (`{"accuracy", "correct", "total"}`), plus every answer.

    `accuracy` counts questions (micro average); `subject_average` is the mean of per-subject accuracies, the
    figure the CMMLU and C-Eval leaderboards report.
    """

    benchmark: str
    shots: int
    accuracy: float
    correct: int
    total: int
    per_subject: dict[str, dict]
    per_category: dict[str, dict]
    records: list[dict]
    scoring: str = "letter"
    split: str = "test"
    subject_average: float = 0.0


# ---------------------------------------------------------------------------------------------------- loading


def load_choice_benchmark(source: str | Path, layout: str = "auto", split: str = "test",
                          subjects: Sequence[str] | None = None, limit: int | None = None) -> Benchmark:
    """Read a benchmark folder (MMLU, C-Eval or CMMLU layout) or, online, a hub id such as 'cais/mmlu'.

    `split` is the one to score (its questions land in `Benchmark.test`); `dev` always holds the few-shot pool.
    `subjects` picks a subset, `limit` keeps the first N questions of each subject.
    """
    if layout != "auto" and layout not in LAYOUTS:
        raise ConfigError(f"Unknown benchmark layout '{layout}'; use one of: auto, {', '.join(LAYOUTS)}.")
    if limit is not None and limit <= 0:
        raise ConfigError(f"limit must be a positive number of questions per subject, got {limit}.")
    split = _SPLIT_ALIASES.get(split, split)
    path = Path(source).expanduser()
    if not path.exists() and _looks_like_hub_id(str(source)):
        return _load_from_hub(str(source), layout, split, subjects, limit)
    if not path.is_dir():
        raise ConfigError(f"Benchmark '{source}' is neither a folder nor a hub id ({', '.join(HUB_IDS)}). Point at "
                          "a folder with dev/ and test/ CSV subfolders, e.g. ../shared/data/mmlu.")
    if layout == "auto":
        layout = _detect_layout(path)
    _check_split(layout, split, path)
    available = _subjects_in(path, layout, split)
    chosen = _choose_subjects(available, subjects, f"{path / split}")
    test = {name: _read_subject(path, layout, split, name)[:limit] for name in chosen}
    dev = {name: _read_subject(path, layout, "dev", name) for name in chosen
           if split != "dev" and _subject_file(path, layout, "dev", name).is_file()}
    if split == "dev":
        dev = test
    return Benchmark(name=path.name, layout=layout, dev=dev, test=test, categories=_categories(layout, chosen),
                     split=split)


def _looks_like_hub_id(text: str) -> bool:
    return text.count("/") == 1 and not text.startswith((".", "/", "~"))


def _check_split(layout: str, split: str, where: object) -> None:
    if split not in _SPLITS[layout]:
        raise ConfigError(f"{where}: the {layout} layout has splits {', '.join(_SPLITS[layout])}; got '{split}'.")


def _categories(layout: str, subjects: Sequence[str]) -> dict[str, str]:
    known = CATEGORIES[layout]
    fallback = "other" if layout == "mmlu" else "Other"  # each benchmark's own spelling of its catch-all category
    return {name: known.get(name, fallback) for name in subjects}


def _detect_layout(folder: Path) -> str:
    files = sorted(folder.glob("*/*.csv"))
    if not files:
        raise DataError(f"{folder} holds no CSV files in subfolders. A benchmark folder has dev/ and test/ (and "
                        "val/) subfolders of <subject>.csv or <subject>_<split>.csv files, as MMLU, C-Eval and "
                        "CMMLU ship them.")
    sample = files[0]
    with sample.open(encoding="utf-8-sig", newline="") as handle:
        first = handle.readline().strip().lower()
    if first.startswith("id,question"):
        return "ceval"
    if first.startswith(",question"):
        return "cmmlu"
    if sample.stem.endswith(f"_{sample.parent.name}"):
        return "mmlu"
    raise DataError(f"Cannot tell the layout of {folder} from {sample}: it has neither a C-Eval header "
                    f"({_HEADER_COLUMNS['ceval']}) nor a CMMLU one ({_HEADER_COLUMNS['cmmlu']}), nor MMLU's "
                    "<subject>_<split>.csv names. Pass layout= one of: " + ", ".join(LAYOUTS) + ".")


def _subject_file(folder: Path, layout: str, split: str, subject: str) -> Path:
    name = f"{subject}.csv" if layout == "cmmlu" else f"{subject}_{split}.csv"
    return folder / split / name


def _subjects_in(folder: Path, layout: str, split: str) -> list[str]:
    split_dir = folder / split
    files = sorted(split_dir.glob("*.csv")) if split_dir.is_dir() else []
    if not files:
        raise DataError(f"{split_dir} holds no CSV files; the {layout} layout keeps the {split} split there "
                        f"(splits: {', '.join(_SPLITS[layout])}).")
    if layout == "cmmlu":
        return [file.stem for file in files]
    suffix = f"_{split}"
    return [file.stem.removesuffix(suffix) for file in files if file.stem.endswith(suffix)]


def _choose_subjects(available: Sequence[str], wanted: Sequence[str] | None, where: str) -> list[str]:
    if not wanted:
        return list(available)
    if isinstance(wanted, str):
        wanted = [wanted]
    for name in wanted:
        if name not in available:
            close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else f" Known subjects: {', '.join(available)}."
            raise ConfigError(f"Unknown subject '{name}' in {where}.{hint}")
    return list(dict.fromkeys(wanted))


def _read_subject(folder: Path, layout: str, split: str, subject: str) -> list[Question]:
    path = _subject_file(folder, layout, split, subject)
    if not path.is_file():
        raise DataError(f"{path} is missing: every subject of the {split} split needs its file there.")
    # Own csv reading, not pandas: errors need line numbers, and quoted fields span lines.
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        if layout == "mmlu":
            columns = {"question": 0, "A": 1, "B": 2, "C": 3, "D": 4, "answer": 5}
            width = 6
        else:
            columns, width = _header_columns(path, layout, next(reader, []))
        questions = []
        line = reader.line_num + 1
        for row in reader:
            if row:
                questions.append(_question(path, line, row, columns, width, layout, subject))
            line = reader.line_num + 1
    if not questions:
        raise DataError(f"{path} holds no questions.")
    return questions


def _header_columns(path: Path, layout: str, header: list[str]) -> tuple[dict[str, int], int]:
    names = {name.strip().lower(): index for index, name in enumerate(header)}
    expected = _HEADER_COLUMNS[layout]
    columns = {}
    for key in ("question", "A", "B", "C", "D"):
        if key.lower() not in names:
            raise DataError(f"{path}, line 1: the header has no column '{key}'; a {layout} file's header is "
                            f"'{expected}', this one is '{','.join(header)}'.")
        columns[key] = names[key.lower()]
    if "answer" in names:
        columns["answer"] = names["answer"]
    elif layout == "cmmlu":
        raise DataError(f"{path}, line 1: the header has no column 'Answer'; a cmmlu file's header is '{expected}'.")
    return columns, len(header)


def _question(path: Path, line: int, row: list[str], columns: dict[str, int], width: int, layout: str,
              subject: str) -> Question:
    if len(row) < max(columns.values()) + 1:
        expected = "question, A, B, C, D, answer" if layout == "mmlu" else _HEADER_COLUMNS[layout]
        raise DataError(f"{path}, line {line}: expected {width} columns ({expected}), found {len(row)}. "
                        "Is an option missing, or a field with a comma left unquoted?")
    answer = None
    if "answer" in columns:
        answer = row[columns["answer"]].strip()
        if answer not in LETTERS:
            raise DataError(f"{path}, line {line}: the answer is '{answer}', not one of {', '.join(LETTERS)}.")
    options = tuple(row[columns[letter]].strip() for letter in LETTERS)
    return Question(subject=subject, question=row[columns["question"]].strip(), options=options, answer=answer,
                    source=f"{path}:{line}")


def _load_from_hub(hub_id: str, layout: str, split: str, subjects: Sequence[str] | None,
                   limit: int | None) -> Benchmark:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise ConfigError(f"Benchmark '{hub_id}' is a hub id, but HF_HUB_OFFLINE is set: offline, the benchmark "
                          "must be a local folder with dev/ and test/ CSV subfolders (e.g. ../shared/data/mmlu). "
                          "Download it where you have internet, or unset HF_HUB_OFFLINE.")
    if layout == "auto":
        layout = HUB_IDS.get(hub_id) or ("cmmlu" if "cmmlu" in hub_id.lower() else
                                         "ceval" if "ceval" in hub_id.lower() else
                                         "mmlu" if "mmlu" in hub_id.lower() else "")
        if not layout:
            raise ConfigError(f"Cannot tell the layout of hub dataset '{hub_id}'; pass layout= one of: "
                              f"{', '.join(LAYOUTS)}.")
    _check_split(layout, split, hub_id)
    chosen = _choose_subjects(sorted(CATEGORIES[layout]), subjects, hub_id)
    test = {name: _hub_subject(hub_id, layout, split, name, limit) for name in chosen}
    dev = test if split == "dev" else {name: _hub_subject(hub_id, layout, "dev", name, None) for name in chosen}
    return Benchmark(name=hub_id, layout=layout, dev=dev, test=test, categories=_categories(layout, chosen),
                     split=split)


def _hub_subject(hub_id: str, layout: str, split: str, subject: str, limit: int | None) -> list[Question]:
    from datasets import load_dataset

    hub_split = "validation" if (layout, split) == ("mmlu", "val") else split
    try:
        rows = load_dataset(hub_id, subject, split=hub_split)
    except Exception as err:  # datasets raises many types for a missing or unreachable dataset
        raise ConfigError(f"Could not load subject '{subject}' ({hub_split}) of '{hub_id}' from the hub "
                          f"({type(err).__name__}: {err}). Use a local benchmark folder instead.") from None
    questions = []
    for index, row in enumerate(rows):
        if limit is not None and index >= limit:
            break
        if layout == "mmlu":
            options, answer = tuple(row["choices"]), LETTERS[int(row["answer"])]
        else:
            options = tuple(str(row[letter]) for letter in LETTERS)
            answer = (row.get("answer") or row.get("Answer") or "").strip() or None
        text = row.get("question") or row.get("Question")
        questions.append(Question(subject=subject, question=str(text).strip(), options=options, answer=answer,
                                  source=f"{hub_id}/{subject}/{hub_split}:{index + 1}"))
    return questions


# ---------------------------------------------------------------------------------------------------- prompts


def format_prompt(benchmark: Benchmark, question: Question, shots: int, scoring: str = "letter") -> str:
    """The raw-text k-shot prompt for `question`, ending where the answer starts ('Answer:' or '答案：')."""
    return _prompt(benchmark, question, _examples(benchmark, question, shots), scoring)


def _examples(benchmark: Benchmark, question: Question, shots: int) -> list[Question]:
    """The first `shots` dev questions of the subject, never the question itself (when scoring the dev split)."""
    pool = benchmark.dev.get(question.subject, [])
    return [example for example in pool if example.source != question.source][:shots]


def _prompt(benchmark: Benchmark, question: Question, examples: Sequence[Question], scoring: str) -> str:
    parts = [_header(benchmark.layout, question.subject)]
    for example in examples:
        answer = _continuations(benchmark.layout, example, scoring)[LETTERS.index(example.answer)]
        parts.append(f"{_block(benchmark.layout, example)}{answer}\n\n")
    parts.append(_block(benchmark.layout, question))
    return "".join(parts)


def _header(layout: str, subject: str) -> str:
    if layout == "mmlu":
        return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    name = SUBJECT_NAMES_ZH.get(layout, {}).get(subject, subject.replace("_", " "))
    return f"以下是关于{name}的单项选择题，请直接给出正确答案的选项。\n\n"


def _block(layout: str, question: Question) -> str:
    options = "".join(f"\n{letter}. {option}" for letter, option in zip(LETTERS, question.options))
    return f"{question.question}{options}\n{'Answer:' if layout == 'mmlu' else '答案：'}"


def _continuations(layout: str, question: Question, scoring: str) -> list[str]:
    """What follows the prompt for each option: ' A' (English) / 'A' (Chinese), or the option's own text."""
    space = " " if layout == "mmlu" else ""
    if scoring == "letter":
        return [space + letter for letter in LETTERS[:len(question.options)]]
    return [space + option for option in question.options]


# ---------------------------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class _Request:
    """One sequence to run: the context plus every continuation token but the last, and the options it scores.

    Each target is (option index, position where its continuation starts, continuation token ids). Options that
    differ only in their last token (" A" / " B" ...) share one sequence, so letter scoring is one pass per question.
    Requests of one `group` (a subject) share their few-shot prefix, which is run once and cached.
    """

    group: int
    question: int
    tokens: tuple[int, ...]
    targets: tuple[tuple[int, int, tuple[int, ...]], ...]


@dataclass
class _Prepared:
    requests: list[_Request] = field(default_factory=list)
    shots_used: list[int] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)


@torch.inference_mode()
def evaluate_choice(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, benchmark: Benchmark,
                    shots: int = 5, batch_size: int = 8, scoring: str = "letter", progress: bool = True,
                    max_length: int | None = None) -> ChoiceResult:
    """Score every question of `benchmark.test` k-shot and return accuracies and one record per question.

    `scoring="letter"` compares the log-probabilities of the answer letters after the prompt; "content" compares
    the summed log-probability of each option's text (the few-shot examples then show answers as text too).
    `batch_size` counts sequences per forward pass. Prompts longer than `max_length` tokens (default: the model's
    max_position_embeddings) lose few-shot examples from the left, then tokens from the left.
    """
    if scoring not in SCORINGS:
        raise ConfigError(f"scoring must be one of {', '.join(SCORINGS)}; got '{scoring}'.")
    if shots < 0:
        raise ConfigError(f"shots must be 0 or more, got {shots}.")
    if batch_size <= 0:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size}.")
    questions = [question for subject in benchmark.test.values() for question in subject]
    unanswered = next((question for question in questions if question.answer is None), None)
    if unanswered is not None:
        raise ConfigError(f"{benchmark.name}: the {benchmark.split} split has no answers ({unanswered.source}); "
                          "C-Eval keeps its test answers private. Score split=val instead.")
    if max_length is None:
        max_length = getattr(model.config, "max_position_embeddings", None) or 2048
    model.eval()
    prepared = _prepare(tokenizer, benchmark, questions, shots, scoring, max_length)
    scores = _score(model, prepared.requests, batch_size, _pad_id(tokenizer), progress,
                    f"{benchmark.name} {shots}-shot")
    records = []
    for index, question in enumerate(questions):
        logprobs = {LETTERS[option]: scores[index, option] for option in range(len(question.options))}
        predicted = max(logprobs, key=logprobs.get)
        records.append({"subject": question.subject, "source": question.source, "answer": question.answer,
                        "predicted": predicted, "logprobs": logprobs, "correct": predicted == question.answer,
                        "shots": prepared.shots_used[index], "truncated": prepared.truncated[index]})
    return _summarise(benchmark, shots, scoring, records)


def _prepare(tokenizer: PreTrainedTokenizerBase, benchmark: Benchmark, questions: Sequence[Question], shots: int,
             scoring: str, max_length: int) -> _Prepared:
    prepared = _Prepared()
    prefix = _special_prefix(tokenizer)
    groups: dict[str, int] = {}
    for index, question in enumerate(questions):
        examples = _examples(benchmark, question, shots)
        conts = _continuations(benchmark.layout, question, scoring)
        longest = max(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in conts)
        while True:
            context = _prompt(benchmark, question, examples, scoring)
            context_ids = prefix + tokenizer(context, add_special_tokens=False)["input_ids"]
            if len(context_ids) + longest <= max_length or not examples:
                break
            examples = examples[1:]  # drop the leftmost example first
        cont_ids = [_continuation_ids(tokenizer, context, context_ids, prefix, text) for text in conts]
        room = max_length - max(len(ids) for ids in cont_ids)
        truncated = len(context_ids) > room
        if truncated:
            context_ids = context_ids[len(context_ids) - max(room, 1):]
        prepared.requests.extend(_requests(groups.setdefault(question.subject, len(groups)), index, context_ids,
                                           cont_ids))
        prepared.shots_used.append(len(examples))
        prepared.truncated.append(truncated)
    return prepared


def _special_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """[BOS] where the tokenizer puts one before text by itself (Llama), else nothing (SmolLM2, Qwen)."""
    with_specials = tokenizer("x")["input_ids"]
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and with_specials[:1] == [bos] else []


def _continuation_ids(tokenizer: PreTrainedTokenizerBase, context: str, context_ids: list[int],
                      prefix: list[int], continuation: str) -> list[int]:
    """The continuation's tokens as the tokenizer splits context + continuation (lm-eval-harness's rule)."""
    whole = prefix + tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    if whole[:len(context_ids)] == context_ids and len(whole) > len(context_ids):
        return whole[len(context_ids):]
    return tokenizer(continuation, add_special_tokens=False)["input_ids"]


def _requests(group: int, question: int, context: list[int], continuations: list[list[int]]) -> list[_Request]:
    if not context:
        raise DataError("A prompt tokenized to nothing; the model needs at least one token before the answer.")
    start = len(context)
    heads = {tuple(ids[:-1]) for ids in continuations}
    if len(heads) == 1:
        head = heads.pop()
        return [_Request(group, question, tuple(context) + head,
                         tuple((option, start, tuple(ids)) for option, ids in enumerate(continuations)))]
    return [_Request(group, question, tuple(context + ids[:-1]), ((option, start, tuple(ids)),))
            for option, ids in enumerate(continuations)]


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if token_id is not None:
            return token_id
    return 0


def _score(model: PreTrainedModel, requests: list[_Request], batch_size: int, pad_id: int, progress: bool,
           label: str) -> dict[tuple[int, int], float]:
    """Summed continuation log-probabilities, keyed by (question, option).

    The tokens a subject's requests all start with (header and few-shot examples, most of a 5-shot prompt) run once;
    each batch then runs only the rest of its sequences, right-padded, on a copy of that cache.
    """
    groups: dict[int, list[int]] = {}
    for index, request in enumerate(requests):
        groups.setdefault(request.group, []).append(index)
    plan = []
    for members in groups.values():
        shared = _shared_length(requests, members)
        members.sort(key=lambda index: -len(requests[index].tokens))  # similar lengths share a batch
        plan += [(shared, members[start:start + batch_size]) for start in range(0, len(members), batch_size)]
    scores: dict[tuple[int, int], float] = {}
    cached: tuple[tuple[int, ...], object] | None = None
    for shared, batch in _progress(plan, progress, label):
        rows = [requests[index] for index in batch]
        prefix = rows[0].tokens[:shared]
        if cached is None or cached[0] != prefix:
            cached = (prefix, _prefix_cache(model, prefix))
        scores.update(_score_batch(model, rows, len(prefix), cached[1], pad_id))
    return scores


def _shared_length(requests: list[_Request], members: list[int]) -> int:
    """Tokens all these requests start with, leaving each at least the token before its first continuation."""
    first = requests[members[0]].tokens
    length = min(start - 1 for index in members for _, start, _ in requests[index].targets)
    for index in members[1:]:
        tokens = requests[index].tokens
        length = min(length, len(tokens))
        length = next((position for position in range(length) if tokens[position] != first[position]), length)
    return max(length, 0)


def _prefix_cache(model: PreTrainedModel, prefix: tuple[int, ...]):
    if not prefix:
        return None
    device = next(model.parameters()).device
    kwargs = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}
    output = model(input_ids=torch.tensor([prefix], device=device), use_cache=True, **kwargs)
    return output.past_key_values


def _score_batch(model: PreTrainedModel, rows: list[_Request], shared: int, cache,
                 pad_id: int) -> dict[tuple[int, int], float]:
    device = next(model.parameters()).device
    width = max(len(row.tokens) for row in rows) - shared
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), shared + width), dtype=torch.long)
    attention[:, :shared] = 1
    for row_index, row in enumerate(rows):
        rest = row.tokens[shared:]
        input_ids[row_index, :len(rest)] = torch.tensor(rest)
        attention[row_index, shared:shared + len(rest)] = 1
    # Right padding: real tokens never attend to pads, and positions simply continue after the shared prefix.
    positions = torch.arange(shared, shared + width).expand(len(rows), -1)
    # Token t of a continuation sits at start + t and is predicted by the logits at start + t - 1.
    needed = sorted({start - 1 + t - shared for row in rows for _, start, ids in row.targets for t in range(len(ids))})
    kwargs = {}
    if cache is not None:
        cache = copy.deepcopy(cache)
        cache.batch_repeat_interleave(len(rows))
        kwargs["past_key_values"] = cache
    column = {position: index for index, position in enumerate(needed)}
    head = _plain_head(model)
    if head is not None and _accepts_logits_to_keep(model):
        # bf16 logits are rounded to ~0.1 near typical magnitudes, enough to tie the four options; the model gives
        # hidden states only and the LM head runs in float32 on the few positions that are scored.
        kwargs["logits_to_keep"] = torch.empty(0, dtype=torch.long, device=device)
        outputs = model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                        position_ids=positions.to(device), use_cache=cache is not None, output_hidden_states=True,
                        **kwargs)
        logprobs = _float32_logprobs(model, head, outputs.hidden_states[-1][:, needed]).cpu()
    else:
        if _accepts_logits_to_keep(model):
            kwargs["logits_to_keep"] = torch.tensor(needed, device=device)
        else:
            column = {position: position for position in needed}
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                       position_ids=positions.to(device), use_cache=cache is not None, **kwargs).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
    scores = {}
    for row_index, row in enumerate(rows):
        for option, start, ids in row.targets:
            columns = torch.tensor([column[start - 1 + t - shared] for t in range(len(ids))])
            scores[row.question, option] = float(logprobs[row_index, columns, torch.tensor(ids)].sum())
    return scores


def _plain_head(model: PreTrainedModel) -> torch.nn.Linear | None:
    """The LM head when it is an ordinary Linear layer (not itself adapted by LoRA), else None."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = causal_lm.get_output_embeddings()
    return head if type(head) is torch.nn.Linear else None


def _float32_logprobs(model: PreTrainedModel, head: torch.nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    logits = torch.nn.functional.linear(hidden.float(), head.weight.float(),
                                        None if head.bias is None else head.bias.float())
    softcap = getattr(causal_lm.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return torch.log_softmax(logits, dim=-1)


def _accepts_logits_to_keep(model: PreTrainedModel) -> bool:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _progress(items: list, enabled: bool, label: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=label, unit="batch")


def _summarise(benchmark: Benchmark, shots: int, scoring: str, records: list[dict]) -> ChoiceResult:
    per_subject = _tally(records, lambda record: record["subject"])
    per_category = _tally(records, lambda record: benchmark.categories.get(record["subject"], "other"))
    correct = sum(record["correct"] for record in records)
    total = len(records)
    subject_average = (sum(entry["accuracy"] for entry in per_subject.values()) / len(per_subject)
                       if per_subject else math.nan)
    return ChoiceResult(benchmark=benchmark.name, shots=shots, accuracy=correct / total if total else math.nan,
                        correct=correct, total=total, per_subject=per_subject, per_category=per_category,
                        records=records, scoring=scoring, split=benchmark.split, subject_average=subject_average)


def _tally(records: list[dict], key) -> dict[str, dict]:
    groups: dict[str, list[bool]] = {}
    for record in records:
        groups.setdefault(key(record), []).append(record["correct"])
    return {name: {"accuracy": sum(hits) / len(hits), "correct": sum(hits), "total": len(hits)}
            for name, hits in sorted(groups.items())}
