"""Deterministic generator of a realistic 1,000-rule file and of messages for bench/rules.py.

Keywords: Chinese of 2–4 characters (support nouns, verb + noun compounds, noun + suffix)
and English words and phrases, ≈3,000+ distinct. Rules: keyword lists on text, subject or
body (some ``ascii_word``, some with ``not`` exception lists, some ``contains_all``), ~100
RE2 regexes, field conditions (channel, sender_domain in a list, ``fields.tier``, headers,
attachments), nested all/any/not, ``$lists`` and named conditions. Messages: Chinese and
English support prose, with a few keywords, order and invoice numbers mixed in.
"""

from __future__ import annotations

import json
import random
import re


def _words(text: str, sep: str | None = None) -> tuple[str, ...]:
    return tuple(text.split(sep))


ZH_NOUNS = _words(
    "退款 订单 发票 账号 密码 登录 物流 快递 包裹 发货 退货 换货 优惠 积分 会员 "
    "余额 充值 提现 支付 付款 扣款 账单 合同 报价 价格 折扣 客服 投诉 售后 保修 "
    "维修 安装 配送 地址 电话 手机 邮箱 验证 短信 通知 系统 网站 页面 应用 软件 "
    "版本 更新 升级 数据 备份 服务 接口 权限 证书 域名 宕机 崩溃 报错 故障 延迟 "
    "卡顿 闪退 乱码 商品 库存 尺码 颜色 质量 破损 漏发 错发 少件 赠品 礼品 运费 "
    "关税 清关 海关 仓库 门店 预约 排队 工单 审核 实名 认证 绑定 解绑 注销 冻结 "
    "解冻 风控 盗号 诈骗 隐私 泄露 广告 骚扰 合作 代理 加盟 采购 批发 样品 开票 "
    "税号 抬头 对账 结算 佣金 分期 利息 逾期 额度 押金 租金 续费 套餐 流量 信号 "
    "宽带 路由 网络 打印 扫码 二维"
)
ZH_VERBS = _words(
    "申请 取消 修改 查询 无法 不能 催促 确认 重新 加急 紧急 关闭 开通 找回 重置 "
    "变更 删除 恢复 补发 补开 核对 退回 拒收 延期 暂停 撤销 投诉 咨询 反馈 举报 "
    "要求 需要 办理 处理 跟进 联系"
)
ZH_SUFFIX = _words("号 单 费 卡 码 率 慢 错 难 差 丢 坏 少 多 高")
EN_NOUNS = _words(
    "refund invoice order account password login shipment package delivery parcel tracking "
    "return exchange coupon discount voucher points membership balance payment charge billing "
    "receipt contract quote price subscription plan renewal upgrade downgrade license key "
    "certificate domain server database backup api endpoint webhook token session cookie "
    "browser app website page dashboard report export import invoice-number vat tax address "
    "phone email notification sms verification identity kyc fraud chargeback dispute warranty "
    "repair installation appointment ticket complaint feedback cancellation outage downtime "
    "latency timeout crash bug error glitch freeze lag firmware driver printer router network "
    "wifi bandwidth storage quota limit permission role admin user profile avatar privacy"
)
EN_VERBS = _words(
    "cancel change update reset track return exchange renew upgrade downgrade close open delete "
    "restore verify confirm dispute request escalate report fix recover transfer activate "
    "deactivate unlock refund replace"
)
EN_PHRASES = _words(
    "money back|cannot log in|can't log in|not working|does not work|still waiting|wrong item|"
    "missing item|damaged item|never arrived|charged twice|double charge|out of stock|"
    "site is down|service unavailable|legal action|data breach|speak to a manager|"
    "terrible service|very disappointed|urgent help|as soon as possible|please advise",
    "|",
)
ZH_SENTENCES = (
    "您好，我上周在你们网站上买了东西，到现在还没有收到，麻烦帮我看一下是什么情况。",
    "我已经联系过好几次了，每次都说会有人跟进，但是一直没有任何回复。",
    "附件是相关的截图，请尽快处理，谢谢！",
    "另外，我想问一下你们的营业时间是几点到几点，周末有没有人值班？",
    "这个问题从昨天晚上开始出现，一直持续到现在，对我们的业务影响很大。",
    "我们公司是你们的老客户了，合作了三年多，希望能给一个满意的答复。",
    "如果今天之内不能解决的话，我们只能考虑其他的供应商了。",
    "麻烦把处理进度同步给我，我的手机一直开着，随时可以联系。",
    "我在页面上操作的时候提示了一个错误，刷新之后还是一样。",
    "之前客服说三个工作日内会有结果，现在已经过了一周了。",
    "请问这种情况需要我提供哪些资料？我可以马上准备好发给你们。",
    "顺便说一下，你们的新版本用起来比以前方便多了，点个赞。",
)
EN_SENTENCES = (
    "Hi team, I placed an order last week and the status page has not changed since Monday.",
    "I have attached a screenshot of the message I see when I try again.",
    "Could you please look into this and let me know what the next steps are?",
    "We have been customers for several years and this has never happened before.",
    "The problem started yesterday evening and is still happening this morning.",
    "I already contacted your support on Friday but nobody got back to me.",
    "Our finance department needs this sorted before the end of the month.",
    "Please reply to this email or call me on my mobile, I am available all day.",
    "Thanks in advance for your help, and sorry for the long message.",
    "By the way, the new version of the app is much faster than the old one.",
    "I tried clearing the cache and using another browser, with the same result.",
    "Let me know if you need any more details from my side.",
)
REGEX_TEMPLATES = (
    r"(订单|order)\s*(号|no\.?|#)?\s*[:：]?\s*{d}\d{{{n},}}",
    r"(发票|invoice)\s*(号|no\.?|#)\s*[a-z]{{{m}}}-?\d{{{n},}}",
    r"(工单|ticket|case)\s*#?\s*{d}\d{{{n}}}",
    r"\b[a-z]{{2}}{d}\d{{{n}}}[a-z]{{2}}\b",
    r"1[3-9]{d}\d{{{n}}}",
    r"(错误码|error code)\s*[:：]?\s*{d}\d{{{m}}}",
    r"^(re|fw|回复|转发)\s*[:：].{{0,{n}}}{w}",
    r"(退款|refund).{{0,{n}}}\d+(\.\d+)?\s*(元|rmb|cny|usd)",
    r"v{d}\.\d+\.\d+.{{0,{n}}}(crash|崩溃|闪退)",
    r"{w}.{{0,{n}}}{w2}",
)
ARGS = ("ticket", "invoice", "crash", "退款", "账单", "login", "订单", "error", "宕机", "vip")


def _plain(value: str) -> str:
    """``value`` as a YAML flow scalar: plain when safe, else double-quoted (JSON)."""
    if re.fullmatch(r"[a-z\u4e00-\u9fff][\w\u4e00-\u9fff .'-]*[\w\u4e00-\u9fff]", value):
        return value
    return json.dumps(value, ensure_ascii=False)


def _flow(items: list[str]) -> str:
    return "[" + ", ".join(_plain(i) for i in items) + "]"


class RuleGen:
    """The vocabulary, lists, regexes and rules of one seed."""

    def __init__(self, seed: int) -> None:
        self.rnd = random.Random(seed)
        self.zh = self._chinese()
        self.en = self._english()
        self.teams = [f"team{i:02d}" for i in range(20)]
        self.domains = [f"client{i:03d}.example" for i in range(120)]
        prose = " ".join(ZH_SENTENCES + EN_SENTENCES).casefold()
        pool = [w for w in self.zh + self.en if w.casefold() not in prose]  # hits come from
        self.rnd.shuffle(pool)  # the keywords mixed into a message, not from its filler
        self.pool = pool
        self.cursor = 0
        self.lists = {f"words{i:02d}": self._take(self.rnd.randint(5, 12)) for i in range(40)}
        self.negations = [f"不需要{w}" for w in ZH_NOUNS[:20]] + [
            f"no {w} needed" for w in EN_NOUNS[:20]
        ]

    def _chinese(self) -> list[str]:
        rnd = self.rnd
        compounds = [v + n for v in ZH_VERBS for n in ZH_NOUNS]
        suffixed = [n + s for n in ZH_NOUNS for s in ZH_SUFFIX]
        words = list(ZH_NOUNS) + rnd.sample(compounds, 1250) + rnd.sample(suffixed, 350)
        return sorted(set(words))

    def _english(self) -> list[str]:
        rnd = self.rnd
        pairs = [f"{v} {n}" for v in EN_VERBS for n in EN_NOUNS] + [
            f"{n} {m}" for n in EN_NOUNS[:60] for m in ("issue", "problem", "status", "failed")
        ]
        return sorted(set(EN_NOUNS) | set(EN_PHRASES) | set(rnd.sample(pairs, 1500)))

    def _take(self, n: int) -> list[str]:
        """The next ``n`` keywords of the shuffled pool (wrapping): most rules own theirs."""
        out = [self.pool[(self.cursor + i) % len(self.pool)] for i in range(n)]
        self.cursor += n
        return out

    def regex(self) -> str:
        """One RE2-compatible regex from a template."""
        rnd = self.rnd
        template = rnd.choice(REGEX_TEMPLATES)
        return template.format(
            d=rnd.randint(1, 9),
            n=rnd.randint(3, 9),
            m=rnd.randint(2, 4),
            w=re.escape(rnd.choice(ARGS)),
            w2=re.escape(rnd.choice(ARGS)),
        )

    def keyword_leaf(self, field: str = "text", n: int | None = None) -> str:
        """A contains_any leaf (flow YAML) over fresh keywords or a ``$list``."""
        rnd = self.rnd
        if rnd.random() < 0.08:
            value = "$" + rnd.choice(sorted(self.lists))
        else:
            value = _flow(self._take(n or rnd.randint(2, 5)))
        opts = ", ascii_word: true" if rnd.random() < 0.15 else ""
        return f"{field}: {{contains_any: {value}{opts}}}"

    def field_leaf(self, broad: bool = True) -> str:
        """A condition on a structured field; only selective ones unless ``broad``."""
        rnd = self.rnd
        if broad and rnd.random() < 0.5:
            return rnd.choice(
                [
                    "channel: {in: [email, imap]}",
                    "channel: {equals: webhook}",
                    f"fields.tier: {{in: [{rnd.choice(['gold', 'silver'])}, enterprise]}}",
                    "attachments: {gte: 1}",
                ]
            )
        choice = rnd.randrange(4)
        if choice == 0:
            return f"sender_domain: {{in: {_flow(rnd.sample(self.domains, 3))}}}"
        if choice == 1:
            return f"header.x-priority: {{equals: {rnd.choice(['1', '5'])!r}}}"
        if choice == 2:
            return f"fields.amount: {{gte: {rnd.choice([10000, 20000, 40000])}}}"
        return f"fields.tier: {{equals: {rnd.choice(['enterprise', 'partner'])}}}"

    def when(self, kind: float) -> list[str]:
        """A ``when:`` block as YAML lines (indented under the rule); ``kind`` picks its shape."""
        rnd = self.rnd
        field = rnd.choice(["text", "text", "text", "subject", "body"])
        if kind < 0.45:
            return [f"when: {{{self.keyword_leaf(field)}}}"]
        if kind < 0.55:
            neg = _flow(rnd.sample(self.negations, 2))
            return ["when:", "  all:", f"    - {{{self.keyword_leaf(field)}}}",
                    f"    - not: {{text: {{contains_any: {neg}}}}}"]  # fmt: skip
        if kind < 0.65:
            return ["when:", "  all:", f"    - {{{self.field_leaf()}}}",
                    f"    - {{{self.keyword_leaf(field)}}}"]  # fmt: skip
        if kind < 0.70:
            return [f"when: {{text: {{contains_all: {_flow(self._take(2))}}}}}"]
        if kind < 0.75:
            return [f"when: {{{rnd.choice(['subject', 'text'])}: {{regex: '{self.regex()}'}}}}"]
        if kind < 0.80:
            return ["when:", "  any:", f"    - {{{self.keyword_leaf(field)}}}",
                    f"    - {{text: {{regex: '{self.regex()}'}}}}",
                    "    - all:", f"        - {{{self.field_leaf(broad=False)}}}",
                    f"        - not: {{{self.keyword_leaf('subject', 2)}}}"]  # fmt: skip
        if kind < 0.85:
            use = rnd.choice(["from_vip", "urgent_header", "big_order"])
            return ["when:", "  all:", f"    - use: {use}", f"    - {{{self.keyword_leaf(field)}}}"]
        if kind < 0.95:  # annotating rules on fields only (tier, domains, headers, amounts)
            return [f"when: {{{self.field_leaf(broad=False)}}}"]
        return ["when:", "  all:", f"    - {{{self.field_leaf()}}}",
                f"    - {{{self.field_leaf(broad=False)}}}"]  # fmt: skip

    def rule(self, i: int) -> list[str]:
        """One rule as YAML lines (a list item); rules on fields only annotate, never route."""
        rnd = self.rnd
        kind = rnd.random()
        lines = [f"  - id: r{i:04d}", f"    description: generated rule {i}"]
        lines += ["    " + line for line in self.when(kind)]
        parts = [f"tags: [t{i % 97}]"]
        if kind < 0.85 and rnd.random() < 0.35:
            parts.insert(0, f"team: {rnd.choice(self.teams)}")
            parts.insert(1, f"category: {rnd.choice(['billing', 'tech', 'sales', 'account'])}")
        if rnd.random() < 0.2:
            parts.append(f"priority: {rnd.choice(['high', 'urgent', 'low'])}")
        lines.append("    set: {" + ", ".join(parts) + "}")
        if rnd.random() < 0.05:
            lines.append("    continue: true")
        return lines

    def rule_file(self, count: int = 1000) -> str:
        """The whole YAML rule file."""
        out = [
            "# generated by bench/rules.py",
            "version: 1",
            "settings:",
            "  timezone: Asia/Shanghai",
            "teams:",
        ]
        out += [f"  {t}: {{inbox: [maildir], description: team {t}}}" for t in self.teams]
        out += ["categories: [general, billing, tech, sales, account]", "lists:"]
        out += [f"  {name}: {_flow(items)}" for name, items in self.lists.items()]
        out += [
            "  vip_domains: " + _flow(self.domains[:10]),
            "conditions:",
            "  from_vip: {sender_domain: {in: $vip_domains}}",
            "  urgent_header: {header.x-priority: {equals: '1'}}",
            "  big_order: {all: [{channel: {equals: webhook}}, {fields.amount: {gte: 10000}}]}",
            "sla:",
            "  urgent: {first_response: 30m}",
            "  high: {first_response: 4h}",
            "defaults: {team: team00, category: general, priority: medium}",
            "rules:",
        ]
        for i in range(count):
            out += self.rule(i)
        return "\n".join(out) + "\n"


def _prose(rnd: random.Random, limit: int, zh: bool) -> list[str]:
    """Support-mail sentences (Chinese or English, some mixed) of about ``limit`` UTF-8 bytes."""
    parts: list[str] = []
    size = 0
    while size < limit:
        if rnd.random() < 0.04:
            prefix = rnd.choice(["订单号 ", "order no. ", "invoice # ", "发票号 ", "ticket #"])
            piece = f"{prefix}{rnd.randint(10**5, 10**12)} "
        else:
            pick_zh = rnd.random() < (0.75 if zh else 0.25)
            piece = rnd.choice(ZH_SENTENCES) if pick_zh else rnd.choice(EN_SENTENCES) + " "
        parts.append(piece)
        size += len(piece.encode())
    return parts


def _fill(rnd: random.Random, gen: RuleGen, limit: int, zh: bool, keywords: int) -> str:
    """Prose of ``limit`` UTF-8 bytes (±1 character) with ``keywords`` keywords mixed in."""
    parts = _prose(rnd, limit, zh)
    for _ in range(keywords):
        word = rnd.choice(gen.pool)
        parts.insert(rnd.randrange(len(parts) + 1), word + ("，" if zh else ", "))
    text = "".join(parts)
    while len(text.encode()) > limit:
        text = text[:-1]
    return text


def message_texts(rnd: random.Random, gen: RuleGen, size: int) -> tuple[str, str]:
    """(subject, body) of ``size`` UTF-8 bytes together; most hit a few keywords, some none."""
    zh = rnd.random() < 0.6
    subject = _fill(rnd, gen, rnd.randint(30, 90), zh, rnd.choice([0, 0, 1])).strip() or "hello"
    if rnd.random() < 0.1:
        subject = "Re: " + subject
    count = rnd.choice([0, 1, 1, 2, 2, 3, 4, 6]) * size // 2048 + rnd.choice([0, 1])
    body = _fill(rnd, gen, size - len(subject.encode()) - 1, zh, count)
    return subject, body
