"""Every cleaning rule on hand-made texts: a case it must fire on and one it must leave alone."""
from pathlib import Path

import pytest

from megactllm.clean import CleanConfig, Cleaner
from megactllm.clean import textstats as ts
from megactllm.clean.config import LineConfig, NormalizeConfig
from megactllm.clean.lang import detect
from megactllm.clean.line_rules import LineFilter
from megactllm.clean.normalize import normalize
from megactllm.clean.wordlists import UrlBlacklist

# Passes every rule at the MAP-CC defaults (checked by test_good_text_is_kept).
GOOD = ("今天上午，市政府召开新闻发布会，介绍了今年城市建设的主要进展。发布会上，有关负责人表示，"
        "全市新建道路一百二十公里，改造老旧小区三百多个，市民的出行和居住条件明显改善。下一步，"
        "政府将继续加大投入，推动公共服务向郊区延伸，让更多群众享受到发展成果。")
GOOD2 = ("据气象部门预报，本周后期将有一次明显的降温过程，北方大部地区气温下降六到八度。专家提醒，"
         "老人和儿童要及时添加衣物，驾车出行注意路面结冰，农业生产要做好防寒准备。")


def rule_of(text, url=None, **overrides):
    cfg = CleanConfig.from_dict(overrides)
    return Cleaner(cfg).clean(text, url).rule


def test_good_text_is_kept():
    assert rule_of(GOOD) is None
    assert rule_of(GOOD + "\n" + GOOD2) is None


@pytest.mark.parametrize("text,rule", [
    ("", "empty"),
    ("   \n  ", "empty"),
    ("今天天气很好。我们去公园。", "too_short"),
    (GOOD * 90, "too_long"),
    ("今天上午市政府召开新闻发布会介绍了今年城市建设的主要进展有关负责人表示全市新建道路一百二十公里改造老旧小区三百多个。",
     "min_sentences"),
    ("【重要通知】【限时优惠】【全场包邮】【点击抢购】" + GOOD[:60], "bracket_ratio"),
    ("编号：2023110512345678，电话：13912345678，邮编：100086。订单号：987654321012。金额：12345.67元。", "digit_ratio"),
    ("This page is written in English only. It has several sentences and ends properly. "
     "Nothing here is Chinese at all, which the language check must notice.", "zh_char_ratio"),
])
def test_document_rules_fire(text, rule):
    assert rule_of(text) == rule


def test_readmore_and_bullet_lines():
    readmore = "\n".join(["这家店的菜品很好吃，服务也很周到。", "价格实惠，环境干净整洁。。。",
                          "点击查看更多", "评论展开"])
    assert rule_of(readmore) == "readmore_lines"
    bullets = "\n".join(f"• 第{i}条，这是一个列表项目，内容比较完整。" for i in range(12))
    assert rule_of(bullets) == "bullet_lines"
    # Negative: a few bullets among prose stay under 90%.
    assert rule_of(GOOD + "\n• 补充说明，相关工作正在推进中。\n" + GOOD2) is None


def test_punctuation_and_language():
    no_punct = "今天上午市政府召开新闻发布会介绍了今年城市建设的主要进展有关负责人表示全市新建道路一百二十公里改造老旧小区三百多个"
    assert rule_of(no_punct, lines={"require_terminal_punctuation": False}) == "no_punctuation"
    japanese = ("今日は朝から雨が降っていましたので、傘を持って会社に行きました。午後には晴れて、"
                "帰り道はとても気持ちがよかったです。明日も天気が良いといいですね。")
    assert rule_of(japanese) == "language"
    assert detect(GOOD) == ("zh", 1.0)
    assert detect(japanese)[0] == "ja"
    assert detect("This is a plain English sentence about the weather.")[0] == "en"
    # Chinese with a few English names is still Chinese.
    lang, score = detect("苹果公司发布了新款 iPhone 和 MacBook，分析师认为销量会增长。")
    assert lang == "zh" and score >= 0.8


def test_repetition_rules_fire():
    # MAP-CC's scripts tested these with `if not rules(...)` on a tuple, so they never dropped
    # anything; here each must remove its document.
    repeated = "欢迎光临本店，欢迎光临本店。" * 8
    assert ts.dup_ngram_coverage(repeated, 5) > 0.6
    assert rule_of(repeated).startswith(("top_", "dup_", "unique_char", "char_entropy"))
    assert rule_of(repeated, filters={"min_unique_char_ratio": None, "min_char_entropy": None,
                                      "max_top_ngram_coverage": None}) == "dup_5gram_coverage"
    top = "哈哈" * 30 + GOOD
    assert ts.top_ngram_coverage(top, 2) > 0.2
    assert rule_of(top, filters={"min_unique_char_ratio": None, "min_char_entropy": None}) == "top_2gram_coverage"
    assert all(ts.dup_ngram_coverage(GOOD, n) < 0.6 for n in range(5, 11))


def test_entropy_and_unique_ratio():
    low = "啊啊啊啊吧吧吧吧。" * 10
    assert ts.char_entropy(low) < 3
    assert rule_of(low, filters={"min_unique_char_ratio": None}) == "char_entropy"
    assert ts.unique_char_ratio(low) <= 0.1
    assert rule_of(low) == "unique_char_ratio"
    assert ts.char_entropy(GOOD) > 3 and ts.unique_char_ratio(GOOD) > 0.1


def test_word_rules():
    hashes = GOOD + "#热点#新闻#城市#建设#发布会#道路#小区#政府#群众#成果#郊区#服务。"
    assert rule_of(hashes) == "hash_ratio"
    dots = GOOD.replace("，", "…") + GOOD2.replace("，", "…")
    assert rule_of(dots, filters={"max_top_ngram_coverage": None}) == "ellipsis_ratio"
    assert rule_of(GOOD + GOOD2) is None
    long_words = "Thermodynamically incomprehensibilities. Uncharacteristically! Counterrevolutionaries."
    assert rule_of(long_words, filters={"min_zh_char_ratio": None, "languages": None}) == "mean_word_length"


def test_url_blacklist_and_in_text_urls(tmp_path):
    ut1 = tmp_path / "blacklists" / "gambling"
    ut1.mkdir(parents=True)
    (ut1 / "domains").write_text("casino.example\n# comment\n", encoding="utf-8")
    (tmp_path / "blacklists" / "news").mkdir()
    (tmp_path / "blacklists" / "news" / "domains").write_text("news.example.cn\n", encoding="utf-8")
    bl = UrlBlacklist(tmp_path / "blacklists", ["gambling"])
    assert bl.blocked("https://www.casino.example/page") and not bl.blocked("https://news.example.cn/a")
    assert UrlBlacklist(tmp_path / "blacklists").blocked("https://news.example.cn/a")
    with pytest.raises(FileNotFoundError, match="adult"):
        UrlBlacklist(tmp_path / "blacklists", ["adult"])
    only_gambling = {"url_blacklist": str(tmp_path / "blacklists"), "url_blacklist_categories": ["gambling"]}
    assert rule_of(GOOD, "http://m.casino.example/x", filters=only_gambling) == "url_blacklist"
    assert rule_of(GOOD, "https://news.example.cn/a", filters=only_gambling) is None
    out = normalize("详情请见https://example.com/a?b=1，或访问www.example.org。", NormalizeConfig())
    assert "http" not in out and "www" not in out and out.startswith("详情请见")


def test_normalisation():
    cfg = NormalizeConfig(nfkc=False, fullwidth_to_halfwidth=True)
    assert normalize("ＡＢＣ１２３！？　", cfg) == "ABC123!? "
    assert normalize("ﬁ①", NormalizeConfig()) == "fi1"  # NFKC folds compatibility forms
    assert normalize("中國歷史", NormalizeConfig(traditional_to_simplified=True)) == "中国历史"
    assert normalize("中國歷史", NormalizeConfig()) == "中國歷史"


def test_line_rules(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("赌博\n", encoding="utf-8")
    sens = tmp_path / "sens.txt"
    sens.write_text("敏感词\n", encoding="utf-8")
    f = LineFilter(LineConfig(bad_words_file=str(bad), sensitive_words_file=str(sens), max_sensitive_ratio=0.3))
    lines = {
        "这是一个正常的句子，没有问题。": None,
        "请启用 javascript 以浏览本页面。": "line_javascript",
        "Lorem ipsum dolor sit amet, consectetur.": "line_lorem_ipsum",
        "这里提供网上赌博的服务，欢迎。": "line_bad_words",
        "敏感词敏感词，敏感词。": "line_sensitive_words",
        "一个敏感词出现在很长的正常句子里面，占比很低，不应该删除。": None,
        "没有结尾标点的一行": "line_terminal_punctuation",
        "好的。": "line_min_words",
        "我们今天去，公园玩。": None,  # two pieces, but jieba finds five words
    }
    for line, rule in lines.items():
        assert f.line_rule(line) == rule, line
    res = f.apply("\n".join(lines))
    assert res.text.split("\n") == [k for k, v in lines.items() if v is None]
    assert res.removed_lines["line_javascript"] == 1 and sum(res.removed_lines.values()) == 6


def test_line_rules_are_applied_in_documents():
    # The line rules run inside the document pipeline (MAP-CC defined them and never called them).
    out = Cleaner(CleanConfig()).clean(GOOD + "\n请启用javascript浏览本页。\n没有标点的导航栏\n" + GOOD2)
    assert out.rule is None
    assert "javascript" not in out.text and "导航栏" not in out.text
    assert out.removed_lines == {"line_javascript": 1, "line_terminal_punctuation": 1}


def test_similar_lines():
    a = "今年全市新建道路一百二十公里，改造老旧小区三百多个，效果明显。"
    b = "今年全市新建道路一百二十公里，改造老旧小区三百余个，效果明显。"  # one character differs
    c = "专家提醒，老人和儿童要及时添加衣物，驾车出行注意路面结冰。"
    f = LineFilter(LineConfig())
    res = f.apply("\n".join([a, c, b, "好的好的，明白了。", "好的好的，明白了。"]))
    assert res.text.split("\n") == [a, c, "好的好的，明白了。", "好的好的，明白了。"]  # short lines never compared
    assert res.removed_lines["line_similar"] == 1
    assert f.apply("\n".join([a, c])).removed_lines["line_similar"] == 0


def test_edit_distance_native():
    from megactllm.clean.minhash import native

    m = native()
    assert m.bounded_edit_distance("kitten", "sitting", 5) == 3
    assert m.bounded_edit_distance("kitten", "sitting", 2) == 3  # over the bound: k + 1
    assert m.bounded_edit_distance("中文文本", "中文本", 2) == 1


def test_config_errors_name_the_problem(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("filters:\n  min_charz: 3\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"r.yaml.*min_charz"):
        CleanConfig.from_yaml(p)
    p.write_text("dedup: {bands: 20}\n", encoding="utf-8")
    cfg = CleanConfig.from_yaml(p, ["dedup.rows=6", "filters.max_top_ngram_coverage={2: 0.3}"])
    assert cfg.dedup.rows == 6 and cfg.filters.max_top_ngram_coverage == {2: 0.3}
    assert CleanConfig.from_yaml(p, ["input.paths=/data/*.jsonl"]).input.paths == ["/data/*.jsonl"]
    with pytest.raises(ValueError, match="exceeds num_perm"):
        CleanConfig.from_yaml(p, ["dedup.rows=13"])


def test_example_recipe_is_the_defaults():
    recipe = Path(__file__).resolve().parents[1] / "examples" / "clean" / "mapcc.yaml"
    assert CleanConfig.from_yaml(recipe).to_dict() == CleanConfig().to_dict()


def test_native_ngram_coverage_matches_reference(shared_data):
    docs = (shared_data / "corpus" / "clue_small_zh.txt").read_text(encoding="utf-8").splitlines()[:300]
    docs += ["欢迎光临本店，欢迎光临本店。" * 8, "ababab", "aaaa", "哈哈" * 30, "a", ""]
    ns = [2, 3, 4, 5, 7, 10]
    for doc in docs:
        got = ts.ngram_coverages(doc, ns)
        for n in ns:
            assert got[n][0] == pytest.approx(ts.top_ngram_coverage(doc, n), abs=1e-12), (doc, n)
            assert got[n][1] == pytest.approx(ts.dup_ngram_coverage(doc, n), abs=1e-12), (doc, n)


def test_segmenter_matches_jieba(shared_data):
    import jieba

    from megactllm.clean.words import _WORD_CHAR_RE, words

    docs = (shared_data / "corpus" / "clue_small_zh.txt").read_text(encoding="utf-8").splitlines()[:400]
    docs += [line.split("\t")[0] for line in
             (shared_data / "corpus" / "news_commentary_en_zh.tsv").read_text(encoding="utf-8").splitlines()[:100]]
    docs += ["C++和Python 3.11，100%的a.b_c-d。", "", "   ", "ｆｕｌｌ　ｗｉｄｔｈ ㄅㄆ"]
    for doc in docs:
        assert words(doc) == [w for w in jieba.lcut(doc, HMM=False) if _WORD_CHAR_RE.search(w)], doc


def test_dup_ngram_limits_per_n():
    # 8-grams repeat less than 5-grams; a limit set only on larger n must still be checked.
    text = "今天市政府召开新闻发布会，介绍城市建设。" * 2 + GOOD
    cov = {n: ts.dup_ngram_coverage(text, n) for n in (5, 8)}
    limits = {5: 0.99, 8: cov[8] - 0.01}
    assert rule_of(text, filters={"max_dup_ngram_coverage": limits, "max_top_ngram_coverage": None}) \
        == "dup_8gram_coverage"
    assert rule_of(text, filters={"max_dup_ngram_coverage": {5: 0.99, 8: cov[8] + 0.01},
                                  "max_top_ngram_coverage": None}) is None


def test_similar_lines_window_and_giant_documents():
    from megactllm.clean.minhash import native

    base = "今年全市新建道路一百二十公里，改造老旧小区三百多个，效果明显。"
    filler = ["".join(chr(0x4E00 + (i * 997 + j * 131) % 20000) for j in range(30)) for i in range(100)]
    near = base[:-2] + "好。"
    lines = [base] + filler + [near, base]
    # The exact repeat is found however far back; the near one only within the window.
    assert native().similar_lines(lines, 0.1, 15, 64)[-2:] == [False, True]
    assert native().similar_lines(lines, 0.1, 15, 1000)[-2:] == [True, True]
    # 20,000 long lines of similar length: bounded by the window, not quadratic.
    import time

    many = ["".join(chr(0x4E00 + (i * 997 + j * 131) % 20000) for j in range(80)) for i in range(20_000)]
    start = time.process_time()
    assert not any(native().similar_lines(many, 0.1, 15, 64))
    assert time.process_time() - start < 20
