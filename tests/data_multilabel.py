"""A small, realistic multi-label data set the tests write themselves (English + Chinese).

Factory maintenance tickets where one ticket can be an equipment fault, a
safety hazard and a spare-parts request at once, labelled with Chinese label
names as a bilingual plant would (设备故障 / 安全隐患 / 备件申请). Each ticket
is built from one clause per label it carries, so the labels are learnable from
the text; some tickets carry no label (`[]`, "routine check, nothing found").
Label cells mix the delimited (`设备故障|安全隐患`) and JSON-list forms, as
real exports do. Also: out-of-scope rows for the OOS tests (off-topic requests
a maintenance bot should refuse).
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

FAULT, SAFETY, PARTS = "设备故障", "安全隐患", "备件申请"
LABELS = (FAULT, SAFETY, PARTS)

CLAUSES = {
    "en": {
        FAULT: ["the main motor on line 3 stopped suddenly", "hydraulic pump 2 is leaking oil badly",
                "conveyor belt C4 keeps jamming", "the breaker on the welding cell tripped twice",
                "press 7 makes a grinding noise and then stalls", "compressor pressure drops every hour",
                "the cooling fan of the CNC spindle is dead", "robot arm 5 throws a servo error"],
        SAFETY: ["an operator almost slipped on the oil on the floor", "the guard rail next to the press is missing",
                 "sparks flew close to a worker's face", "the emergency stop button does not respond",
                 "a forklift nearly hit someone in aisle 2", "exposed live wires hang near the walkway",
                 "the fire extinguisher by the paint booth is empty", "a worker's glove got caught in the rollers"],
        PARTS: ["please order two new drive belts", "we need a replacement bearing for the gearbox",
                "request four spare fuses for the panel", "please buy a new hydraulic seal kit",
                "send us a spare proximity sensor", "order one more filter cartridge for the compressor",
                "we need new brushes for the motor", "please reorder the coupling for pump 3"],
        None: ["routine inspection done, nothing to report", "monthly lubrication completed as planned",
               "shift handover notes attached, all normal", "cleaned the work area after the audit"],
    },
    "zh": {
        FAULT: ["三号线主电机突然停转", "二号液压泵漏油严重", "四号传送带反复卡住", "焊接单元的断路器跳闸两次",
                "七号冲床发出异响后停机", "空压机压力每小时下降", "数控主轴冷却风扇不转", "五号机械臂报伺服故障"],
        SAFETY: ["操作工差点在地面油渍上滑倒", "冲床旁边的防护栏缺失", "火花溅到工人脸部附近", "急停按钮按下没有反应",
                 "叉车在二号通道险些撞到人", "通道旁有裸露的带电电线", "喷漆房旁的灭火器是空的", "工人的手套被卷进滚筒"],
        PARTS: ["请采购两条新的传动皮带", "齿轮箱需要更换轴承", "申请四个配电柜备用保险丝", "请购买一套液压密封件",
                "请寄一个备用接近开关", "再订一个空压机滤芯", "电机需要新的碳刷", "请补订三号泵的联轴器"],
        None: ["例行巡检完成，无异常", "月度润滑按计划完成", "交接班记录已附上，一切正常", "审核后已清理工作区域"],
    },
}
JOIN = {"en": [", and ", "; also ", ". Also "], "zh": ["，并且", "；另外", "。同时"]}

OUT_OF_SCOPE = ["what will the weather be like tomorrow", "recommend a good pizza place near the plant",
                "how many calories are in a banana", "tell me a joke about cats", "who won the football match yesterday",
                "book me a flight to Berlin", "what is the capital of Australia", "play some relaxing music",
                "明天天气怎么样", "附近有什么好吃的餐厅", "给我讲个笑话", "帮我订一张去上海的机票"]


def make_rows(n: int, seed: int = 0, langs: tuple[str, ...] = ("en", "zh")) -> list[tuple[str, str]]:
    """`n` (text, label cell) rows; label sets of size 0-3, every label frequent, cells in both notations."""
    rng = random.Random(seed)
    sets = [(FAULT,), (SAFETY,), (PARTS,), (FAULT, SAFETY), (FAULT, PARTS), (SAFETY, PARTS), (FAULT, SAFETY, PARTS), ()]
    weights = [5, 4, 4, 3, 3, 1, 1, 2]
    rows = []
    for i in range(n):
        lang = langs[i % len(langs)]
        labels = rng.choices(sets, weights)[0]
        parts = [rng.choice(CLAUSES[lang][l]) for l in labels] or [rng.choice(CLAUSES[lang][None])]
        rng.shuffle(parts)
        text = parts[0]
        for p in parts[1:]:
            text += rng.choice(JOIN[lang]) + p
        if not labels:
            cell = "[]"
        elif rng.random() < 0.3:
            cell = json.dumps(list(labels), ensure_ascii=False)
        else:
            cell = "|".join(labels)
        rows.append((text, cell))
    return rows


def write_csv(path: Path, rows, header=("text", "label")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_multilabel_splits(root: Path, n_train: int = 96, n_dev: int = 32, n_test: int = 32) -> dict[str, Path]:
    return {"train": write_csv(root / "ml_train.csv", make_rows(n_train, seed=1)),
            "dev": write_csv(root / "ml_dev.csv", make_rows(n_dev, seed=2)),
            "test": write_csv(root / "ml_test.csv", make_rows(n_test, seed=3))}
