"""Multiple-choice benchmark files (MMLU, C-Eval, CMMLU): `load_choice_benchmark()` reads any of the three CSV
layouts (or, online, their hub copies) into one `Benchmark`, with each subject's official category.

Scoring lives in choice.py; this module only reads and checks questions, so a broken file fails before any model
is loaded.
"""

from __future__ import annotations

import csv
import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
