#!/usr/bin/env python
"""Writes examples/data/raw_sample.jsonl: the sample corpus as a crawl would deliver it.

The 300 original documents of make_sample_corpus.py, plus what a cleaner must remove, planted
deterministically (fixed seed) so that scripts/full_path.sh's cleaning report has something to show:

- exact duplicates: documents repeated verbatim (a page crawled twice);
- near duplicates: copies with a few characters changed (a mirror that rewrote punctuation);
- junk: navigation fragments, JavaScript, lorem ipsum, digit tables, hashtag spam, one phrase
  repeated, 【】 link lists, "read more" teasers, texts without punctuation;
- bad records: a line that is not JSON and a record without a text field (counted, not fatal).

    python examples/data/make_raw_sample.py            # rewrites raw_sample.jsonl
"""
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_sample_corpus import make_documents  # noqa: E402  (the sentences are the project's own)

EXACT_COPIES = 30
NEAR_COPIES = 30

JUNK = [
    "首页 | 关于我们 | 联系方式",
    "点击这里",
    "function init() { var x = document.getElementById('menu'); x.style.display = 'none'; }\n"
    "window.onload = init; // 请启用 JavaScript 后再浏览本页。",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit. 这里将放置正文内容，敬请期待。"
    "Lorem ipsum dolor sit amet, sed do eiusmod tempor incididunt ut labore.",
    "订单号 2023100112345678 金额 998877 元 电话 13800138000 13900139000 13700137000 "
    "编号 55667788 99001122 33445566 77889900 11223344 日期 20231001 20231002 20231003。",
    "#美食 #旅行 #生活 #摄影 #日常 #打卡 #周末 #好物推荐 #分享 #记录 今天也是美好的一天！#开心",
    "好好学习天天向上。" * 20,
    "【热门】【推荐】【精选】【独家】【最新】【限时】【免费】【下载】【专题】【排行】看这里。",
    "这篇文章介绍了做饭的几个小技巧，阅读全文\n更多精彩内容请点击展开\n查看更多...\n继续阅读 readmore",
    "今天天气很好我们一起去公园散步然后回家吃饭晚上看电视早点休息",
    "加微信领取优惠券，加微信领取优惠券，加微信领取优惠券，加微信领取优惠券，加微信领取优惠券。",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z 1 2 3 4 5 6 7 8 9 0 ! ? . , ; :",
]


def perturb(text: str, rng: random.Random) -> str:
    """A copy with about 2% of its characters replaced by a neighbour or a punctuation variant."""
    chars = list(text)
    swaps = {"，": ",", "。": ".", ",": "，", ".": "。", "的": "地", " ": "  "}
    for _ in range(max(1, len(chars) // 50)):
        i = rng.randrange(len(chars))
        chars[i] = swaps.get(chars[i], chars[i - 1] if i else chars[i])
    return "".join(chars)


def make_raw(seed: int = 7) -> list:
    rng = random.Random(seed)
    docs = [{"text": d["text"], "source": "sample"} for d in make_documents()]
    originals = list(docs)
    lines = [json.dumps(d, ensure_ascii=False) for d in docs]
    for d in rng.sample(originals, EXACT_COPIES):
        lines.append(json.dumps({"text": d["text"], "source": "exact_copy"}, ensure_ascii=False))
    for d in rng.sample(originals, NEAR_COPIES):
        lines.append(json.dumps({"text": perturb(d["text"], rng), "source": "near_copy"}, ensure_ascii=False))
    for text in JUNK:
        lines.append(json.dumps({"text": text, "source": "junk"}, ensure_ascii=False))
    lines.append('{"text": "这一行被截断了，不是完整的 JSON')
    lines.append(json.dumps({"body": "没有 text 字段的记录。", "source": "bad_record"}, ensure_ascii=False))
    rng.shuffle(lines)
    return lines


def main() -> None:
    out = HERE / "raw_sample.jsonl"
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(line + "\n" for line in make_raw())
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} KB)")


if __name__ == "__main__":
    main()
