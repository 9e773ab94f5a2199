"""Synthetic weekly sales: a regression where the numbers matter as much as the text.

Why: the acceptance test for `data.feature_columns` is "a run with numeric
features beats the same run without them on data where they matter". No
public data set here has both a product text and numeric columns, so this
script builds one with a known mechanism:

    sales = base(category) * (price / reference_price(category)) ** -elasticity(category)
            * (store_m2 / 1000) ** 0.6 * season(week, category) * lognormal noise

The product description (English or Chinese, several templates and adjectives
per category) reveals the category, hence base demand and price sensitivity;
price, week and store size are numeric columns. A text-only model can learn
the category effect but not the price and store effects; a model with the
features can learn both.

    python bench/make_sales_data.py --out runs/sales_data            # writes train/dev/test CSVs + 2 configs
    python bench/make_sales_data.py --out runs/sales_data --run      # ... and trains both variants, then
                                                                     # writes runs/sales_data/comparison.md
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import subprocess
import sys
from pathlib import Path

# category -> (base weekly units, reference price, price elasticity, seasonal peak week or None,
#              English nouns, Chinese nouns)
CATEGORIES = {
    "water": (320, 6.0, 0.6, 30, ["bottled spring water 6-pack", "sparkling mineral water crate"],
              ["矿泉水六瓶装", "苏打气泡水整箱"]),
    "coffee": (90, 14.0, 1.8, None, ["premium arabica coffee beans", "dark roast ground coffee"],
               ["阿拉比卡咖啡豆", "深度烘焙咖啡粉"]),
    "ice_cream": (150, 9.0, 2.2, 28, ["vanilla ice cream tub", "chocolate ice cream cones"],
                  ["香草冰淇淋桶装", "巧克力甜筒冰淇淋"]),
    "soup": (110, 7.0, 1.0, 2, ["tomato soup cans", "instant chicken noodle soup"],
             ["番茄浓汤罐头", "鸡肉方便面汤"]),
    "batteries": (45, 12.0, 0.8, None, ["AA alkaline batteries 8-pack", "rechargeable AAA batteries"],
                  ["五号碱性电池八节装", "七号充电电池"]),
    "chocolate": (200, 5.0, 1.5, 51, ["milk chocolate bar", "dark chocolate gift box"],
                  ["牛奶巧克力排块", "黑巧克力礼盒"]),
    "detergent": (70, 15.0, 1.2, None, ["laundry detergent pods", "liquid laundry detergent 3L"],
                  ["洗衣凝珠", "三升装洗衣液"]),
    "sunscreen": (40, 13.0, 1.4, 27, ["SPF 50 sunscreen lotion", "kids sunscreen spray"],
                  ["SPF50 防晒乳", "儿童防晒喷雾"]),
}
ADJ_EN = ["", "store brand ", "family size ", "new ", "best-selling ", "organic "]
ADJ_ZH = ["", "自营", "家庭装", "新款", "热销", "有机"]
TEMPLATES_EN = ["{adj}{noun}", "{adj}{noun}, shelf end display", "{adj}{noun} - weekly offer", "{noun} ({adj}pack)"]
TEMPLATES_ZH = ["{adj}{noun}", "{adj}{noun}，端架陈列", "本周特价：{adj}{noun}", "{noun}（{adj}）"]
HEADER = ["description", "price", "week", "store_m2", "sales"]


def _season(week: int, peak: int | None) -> float:
    if peak is None:
        return 1.0
    d = min(abs(week - peak), 52 - abs(week - peak))
    return 1.0 + 0.6 * math.exp(-(d / 6.0) ** 2)


def generate(n: int, seed: int = 0, chinese_share: float = 0.3) -> list[dict]:
    """`n` rows of {description, price, week, store_m2, sales}; deterministic for a seed."""
    rng = random.Random(seed)
    rows = []
    names = sorted(CATEGORIES)
    for _ in range(n):
        cat = rng.choice(names)
        base, ref, elasticity, peak, nouns_en, nouns_zh = CATEGORIES[cat]
        zh = rng.random() < chinese_share
        noun = rng.choice(nouns_zh if zh else nouns_en)
        adj = rng.choice(ADJ_ZH if zh else ADJ_EN)
        text = rng.choice(TEMPLATES_ZH if zh else TEMPLATES_EN).format(adj=adj, noun=noun).replace("()", "").replace("（）", "").strip()
        price = round(ref * rng.uniform(0.55, 1.45), 2)
        week = rng.randint(1, 52)
        store = rng.choice([400, 650, 900, 1200, 1800, 2500])
        mean = base * (price / ref) ** (-elasticity) * (store / 1000) ** 0.6 * _season(week, peak)
        sales = round(mean * math.exp(rng.gauss(0.0, 0.08)), 1)
        rows.append({"description": text, "price": price, "week": week, "store_m2": store, "sales": sales})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HEADER)
        w.writeheader()
        w.writerows(rows)
    return path


def write_splits(out: Path, n_train: int = 1600, n_dev: int = 200, n_test: int = 400, seed: int = 0) -> dict[str, Path]:
    """train/dev/test CSVs drawn from one seeded stream (so they never share a row by construction)."""
    rows = generate(n_train + n_dev + n_test, seed)
    return {"train": write_csv(out / "train.csv", rows[:n_train]),
            "dev": write_csv(out / "dev.csv", rows[n_train:n_train + n_dev]),
            "test": write_csv(out / "test.csv", rows[n_train + n_dev:])}


def config_text(paths: dict[str, Path], output_dir: Path, features: bool, epochs: float = 3, model: str = "minilm-l6") -> str:
    feats = "  feature_columns: [price, week, store_m2]\n" if features else ""
    return (f"# Synthetic sales ({'text + numeric features' if features else 'text only'}); see bench/make_sales_data.py\n"
            f"task: regression\nmodel: {model}\noutput_dir: {output_dir}\nbaseline: true\n"
            f"data:\n  train: {paths['train']}\n  dev: {paths['dev']}\n  test: {paths['test']}\n"
            f"  text_column: description\n  label_column: sales\n{feats}"
            f"train:\n  epochs: {epochs}\n  batch_size: 32\n  lr: 1.0e-4\n  max_length: 32\n  metric_for_best: r2\n  seed: 42\n")


def comparison_markdown(with_features: dict, text_only: dict) -> str:
    keys = ("mae", "rmse", "r2", "spearman")
    lines = ["# Synthetic sales: the same fine-tuning run with and without numeric features", "",
             "| run | " + " | ".join(keys) + " | train s |", "|---|" + "---|" * (len(keys) + 1)]
    for name, m in (("text only", text_only), ("text + price, week, store_m2", with_features)):
        t = m["test"]
        lines.append(f"| {name} | " + " | ".join(f"{t[k]:.4f}" for k in keys) + f" | {m['train']['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/sales_data", help="folder for the CSVs and configs")
    ap.add_argument("--n-train", type=int, default=1600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--run", action="store_true", help="train both variants and write comparison.md")
    args = ap.parse_args(argv)
    out = Path(args.out)
    paths = write_splits(out, n_train=args.n_train, seed=args.seed)
    runs = {"features": out / "run_features", "text_only": out / "run_text_only"}
    cfgs = {}
    for name, run_dir in runs.items():
        cfgs[name] = out / f"sales_{name}.yaml"
        cfgs[name].write_text(config_text(paths, run_dir, name == "features", args.epochs), encoding="utf-8")
    print(f"wrote {', '.join(str(p) for p in paths.values())} and {', '.join(str(c) for c in cfgs.values())}")
    if not args.run:
        return 0
    for name in ("text_only", "features"):
        subprocess.run([sys.executable, "-m", "domaintune", "train", str(cfgs[name]), "--overwrite"], check=True)
    metrics = {n: json.loads((d / "metrics.json").read_text(encoding="utf-8")) for n, d in runs.items()}
    md = comparison_markdown(metrics["features"], metrics["text_only"])
    (out / "comparison.md").write_text(md, encoding="utf-8")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
