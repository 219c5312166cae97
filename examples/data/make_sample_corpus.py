#!/usr/bin/env python
"""Writes examples/data/sample_corpus.jsonl: a small, original, mostly Chinese corpus.

Every sentence below was written for megactllm (no external text). Documents are drawn from
one topic each, deterministically (fixed seed), so the file is reproducible byte for byte:

    python examples/data/make_sample_corpus.py            # rewrites sample_corpus.jsonl
"""
import json
import random
from pathlib import Path

ZH_TOPICS = {
    "天气": [
        "今天早上起了大雾，路上的车都开得很慢。",
        "天气预报说明天有小雨，出门记得带伞。",
        "入秋以后，早晚温差变大，要注意添衣。",
        "夏天的午后常常突然下起雷阵雨，很快又放晴。",
        "北方的冬天干燥寒冷，屋里开着暖气也要多喝水。",
        "南方的梅雨季节持续一个多月，衣服总是晾不干。",
        "春天到了，公园里的桃花和樱花陆续开放。",
        "台风登陆前，沿海城市提前停课停工。",
        "这几天空气质量不错，能清楚地看到远处的山。",
        "气温降到零下以后，湖面结了一层薄冰。",
        "连续晴了半个月，田里的庄稼急需一场雨。",
        "傍晚的晚霞把整片天空染成了橙红色。",
    ],
    "烹饪": [
        "做番茄炒蛋时，先把鸡蛋炒到半熟盛出来。",
        "番茄切块后下锅翻炒，加一点糖可以中和酸味。",
        "煮米饭的水量一般是米的一点二倍左右。",
        "炖排骨之前先焯水，能去掉血沫和腥味。",
        "包饺子的面要和得软硬适中，醒上半小时更好擀。",
        "清蒸鱼的关键是火候，水开后蒸八分钟就够了。",
        "凉拌黄瓜要用刀拍碎，这样更容易入味。",
        "做红烧肉时，先炒糖色，颜色才会红亮。",
        "熬粥的时候要不时搅拌，防止粘锅。",
        "蔬菜最好现洗现切，切好后不要久放。",
        "炒青菜要大火快炒，出锅前再放盐。",
        "自己在家做面包，发酵的温度最好在三十度左右。",
    ],
    "出行": [
        "早高峰的地铁非常拥挤，很多人选择提前出门。",
        "坐高铁从北京到上海只需要四个多小时。",
        "共享单车方便了短途出行，但要停在指定区域。",
        "长途自驾前，要检查轮胎、机油和刹车。",
        "节假日的高速公路经常堵车，最好错峰出行。",
        "在机场过安检时，充电宝不能托运，只能随身携带。",
        "公交车上要给老人和孕妇让座。",
        "城市的快速公交有专用车道，准点率很高。",
        "走路上班既能锻炼身体，又不用担心堵车。",
        "地图软件可以实时显示路况，帮助我们避开拥堵。",
        "夜里开车要打开大灯，会车时记得切换成近光灯。",
    ],
    "学习": [
        "学习一门外语，最重要的是每天坚持练习。",
        "做笔记的时候，用自己的话总结比照抄更有效。",
        "考试前一晚要保证睡眠，熬夜反而影响发挥。",
        "遇到不会的题目，先独立思考，再去请教老师。",
        "图书馆里很安静，适合长时间专心读书。",
        "背单词可以利用零碎时间，比如排队和坐车的时候。",
        "小组讨论能让大家从不同角度理解同一个问题。",
        "学数学不能只看例题，一定要自己动手做题。",
        "读完一本书后写几句感想，能加深印象。",
        "制定学习计划时，目标要具体，时间要留有余地。",
        "错题本记录了自己的薄弱环节，复习时很有用。",
        "好奇心是最好的老师，问题往往比答案更重要。",
    ],
    "编程": [
        "写代码之前，先想清楚程序要解决什么问题。",
        "变量名要能说明它的含义，不要只用一个字母。",
        "单元测试能在修改代码后及时发现错误。",
        "版本控制工具可以记录每一次修改，方便回退。",
        "程序运行太慢时，先测量瓶颈在哪里，再去优化。",
        "一个函数最好只做一件事，这样更容易测试和复用。",
        "遇到报错信息不要慌，仔细读一遍通常就能找到原因。",
        "代码审查可以让团队成员互相学习，减少缺陷。",
        "把重复的代码提取成函数，可以减少出错的机会。",
        "多线程程序要注意共享数据的同步问题。",
        "写注释时要说明为什么这样做，而不只是做了什么。",
        "在服务器上部署程序前，要先在测试环境里验证。",
        "大语言模型先把文本切分成词元，再预测下一个词元。",
        "训练模型时要留出一部分数据做验证，观察是否过拟合。",
    ],
    "健康": [
        "每天走六千步以上，对心肺功能有好处。",
        "长时间看屏幕后，要看看远处，让眼睛休息一下。",
        "饭后不要马上剧烈运动，最好休息半小时。",
        "成年人每天需要七到八个小时的睡眠。",
        "多吃蔬菜水果，少吃油炸食品，有助于保持健康。",
        "运动前要热身，运动后要拉伸，可以减少受伤。",
        "感冒的时候要多喝温水，注意休息。",
        "久坐办公的人，每隔一小时应该站起来活动一下。",
        "游泳是一项全身运动，对关节的压力也比较小。",
        "保持良好的心态，对身体健康同样重要。",
        "定期体检可以及早发现身体的问题。",
    ],
    "文化": [
        "春节是中国最重要的传统节日，家人会团聚在一起吃年夜饭。",
        "端午节有吃粽子和赛龙舟的习俗。",
        "中秋节的晚上，人们一边赏月一边吃月饼。",
        "书法讲究笔画的轻重缓急，需要长期练习。",
        "茶在中国有几千年的历史，不同地区有不同的喝法。",
        "京剧的脸谱用不同的颜色表示人物的性格。",
        "很多古诗描写了山水和四季的景色。",
        "剪纸是一种民间艺术，常在节日时贴在窗户上。",
        "元宵节有看花灯和猜灯谜的传统。",
        "各地的方言差别很大，但书面文字是相通的。",
        "博物馆里的文物记录了古人的生活和技艺。",
    ],
    "科学": [
        "水在标准大气压下一百摄氏度沸腾。",
        "月亮本身不发光，我们看到的是它反射的太阳光。",
        "植物通过光合作用，把二氧化碳和水转化为养分和氧气。",
        "声音在空气中的传播速度大约是每秒三百四十米。",
        "地球绕太阳公转一周大约需要三百六十五天。",
        "彩虹是阳光经过雨滴折射和反射形成的。",
        "磁铁的同极相斥，异极相吸。",
        "人体中大约有百分之六十是水。",
        "闪电过后才听到雷声，是因为光比声音传得快。",
        "化石可以告诉我们很久以前生物的样子。",
        "电池把化学能转化为电能。",
        "显微镜让我们看到了肉眼看不见的细胞。",
    ],
    "生活": [
        "周末我们一家人去郊外野餐，孩子们玩得很开心。",
        "楼下新开了一家面馆，每天中午都排着长队。",
        "搬家之前要把东西分类打包，并在箱子上写清楚。",
        "垃圾分类已经成为很多城市居民的日常习惯。",
        "网上购物很方便，但也要注意辨别商品的真假。",
        "养一盆绿植，可以让房间看起来更有生气。",
        "每个月记账，可以清楚地知道钱花在了哪里。",
        "邻居之间互相帮忙，让小区更加温暖。",
        "晚饭后去公园散步，是很多老人的习惯。",
        "节约用水用电，从关好水龙头和随手关灯做起。",
        "朋友生日时，一张手写的贺卡也能表达心意。",
        "周末早上去菜市场，能买到最新鲜的蔬菜。",
    ],
    "工作": [
        "开会之前发出议程，可以让讨论更有效率。",
        "新员工入职后，通常会有一位同事带着熟悉工作。",
        "重要的事情最好用邮件确认，避免误解。",
        "完成一个项目后，团队会一起总结经验和教训。",
        "合理安排优先级，先做重要而紧急的事情。",
        "远程办公节省了通勤时间，但也需要更好的自律。",
        "向领导汇报时，先说结论，再讲原因和细节。",
        "跨部门合作时，要明确每个人的职责和截止时间。",
        "适当休假可以让人恢复精力，提高工作效率。",
        "写周报能帮助自己回顾一周的进展和问题。",
    ],
}

EN_TOPICS = {
    "weather": [
        "The morning was cold and foggy, but the sun came out by noon.",
        "Heavy rain is expected this weekend, so the picnic has been moved indoors.",
        "Spring arrives late in the mountains, where snow can fall in April.",
        "A light breeze kept the afternoon pleasant despite the heat.",
        "The forecast says the temperature will drop below freezing tonight.",
    ],
    "cooking": [
        "Rinse the rice until the water runs clear before cooking it.",
        "A pinch of salt brings out the sweetness in fresh tomatoes.",
        "Let the dough rest for thirty minutes so it is easier to roll out.",
        "Stir the soup from time to time so it does not stick to the pot.",
        "Vegetables keep their color when they are cooked quickly over high heat.",
    ],
    "programming": [
        "Write a failing test first, then write the code that makes it pass.",
        "Small functions with clear names are easier to read and to reuse.",
        "Measure before you optimize; the slow part is rarely where you expect.",
        "Version control lets a team work on the same code without losing changes.",
        "A language model reads text as tokens and learns to predict the next one.",
        "Error messages should say what went wrong and what to do about it.",
    ],
    "travel": [
        "The train left on time and reached the coast before lunch.",
        "Pack light, and keep your passport and tickets in one safe place.",
        "Local markets are a good place to try food you cannot find at home.",
        "Learning a few words of the local language makes people smile.",
        "The old town is best explored on foot, early in the morning.",
    ],
    "learning": [
        "Practice a little every day instead of a lot once a week.",
        "Explaining an idea to someone else shows how well you understand it.",
        "Good notes are short, written in your own words, and reviewed often.",
        "Curiosity turns a boring task into a question worth answering.",
        "Sleep helps the brain keep what it learned during the day.",
    ],
}

ZH_OPENERS = ["", "", "", "说到{t}，", "关于{t}，有几点值得一提。", "今天聊聊{t}。"]


def make_documents(seed: int = 2024, zh_docs: int = 240, en_docs: int = 60) -> list:
    rng = random.Random(seed)
    docs = []
    zh_names = sorted(ZH_TOPICS)
    for i in range(zh_docs):
        topic = zh_names[i % len(zh_names)]
        k = rng.randint(3, 7)
        opener = rng.choice(ZH_OPENERS).format(t=topic)
        body = "".join(rng.sample(ZH_TOPICS[topic], k))
        docs.append({"text": opener + body, "topic": topic, "lang": "zh"})
    en_names = sorted(EN_TOPICS)
    for i in range(en_docs):
        topic = en_names[i % len(en_names)]
        k = rng.randint(2, 5)
        docs.append({"text": " ".join(rng.sample(EN_TOPICS[topic], k)), "topic": topic, "lang": "en"})
    rng.shuffle(docs)
    return docs


def main() -> None:
    out = Path(__file__).resolve().parent / "sample_corpus.jsonl"
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(json.dumps(doc, ensure_ascii=False) + "\n" for doc in make_documents())
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} KB)")


if __name__ == "__main__":
    main()
