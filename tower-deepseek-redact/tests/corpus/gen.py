#!/usr/bin/env python3
"""Generates the labelled detection corpus `corpus.jsonl` (Python 3 standard library only).

    python3 tower-deepseek-redact/tests/corpus/gen.py > tower-deepseek-redact/tests/corpus/corpus.jsonl

Deterministic (fixed seed): the same script writes the same file. Each line is one chat text:

    {"text": "...", "spans": [[start, end, "TYPE"], ...], "negatives": [[start, end, "kind"], ...]}

Offsets are UTF-8 byte offsets. `spans` are the personal values and secrets a detector must
find, exactly, with their type; `negatives` are look-alikes (invoice codes, version strings,
file names with `@`, placeholders, numbers failing a checksum, order numbers, timestamps) that
must not be masked. Values are written the ways people write them: spaces, dashes, parentheses,
full-width digits, `+86`/`0086`, grouped IDs, keys of many providers, in Chinese, English and
mixed sentences.
"""

import json
import random
import string
import sys

R = random.Random(15)

DIGITS = "0123456789"
ALNUM = string.ascii_letters + string.digits
UPPER_DIGITS = string.ascii_uppercase + string.digits
URLSAFE = ALNUM + "_-"
B64 = ALNUM + "+/"


def rnd(chars, n):
    return "".join(R.choice(chars) for _ in range(n))


def fw(s):
    """Full-width form of the ASCII characters in `s` (as Chinese input methods write them)."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in s)


def maybe_fw(s, p=0.08):
    return fw(s) if R.random() < p else s


# ---------------------------------------------------------------- personal data

MOBILE_PREFIXES = (
    [f"13{d}" for d in DIGITS]
    + ["145", "147", "149", "150", "151", "152", "153", "155", "156", "157", "158", "159"]
    + ["162", "165", "166", "167", "170", "171", "172", "173", "175", "176", "177", "178"]
    + [f"18{d}" for d in DIGITS]
    + ["190", "191", "192", "193", "195", "196", "197", "198", "199"]
)


def mobile():
    d = R.choice(MOBILE_PREFIXES) + rnd(DIGITS, 8)
    a, b, c = d[:3], d[3:7], d[7:]
    forms = [
        d, d, d, f"{a} {b} {c}", f"{a}-{b}-{c}", f"+86{d}", f"+86 {d}", f"+86 {a} {b} {c}",
        f"+86-{a}-{b}-{c}", f"0086{d}", f"0086 {d}", f"(+86) {d}", f"+86 {a}-{b}-{c}",
        f"(+86){a} {b} {c}",
    ]
    return maybe_fw(R.choice(forms), 0.1)


# Area codes from the PRC numbering plan: 3-digit (010, 02x) and a sample of 4-digit ones.
AREA3 = ["010", "020", "021", "022", "023", "024", "025", "027", "028", "029"]
AREA4 = [
    "0311", "0312", "0335", "0351", "0356", "0371", "0379", "0391", "0411", "0415", "0421",
    "0431", "0451", "0459", "0471", "0512", "0513", "0516", "0523", "0531", "0532", "0535",
    "0546", "0551", "0553", "0571", "0574", "0577", "0580", "0591", "0592", "0595", "0631",
    "0660", "0663", "0691", "0701", "0711", "0716", "0731", "0735", "0746", "0751", "0752",
    "0755", "0756", "0757", "0760", "0769", "0771", "0773", "0791", "0798", "0812", "0816",
    "0817", "0825", "0831", "0851", "0871", "0877", "0883", "0891", "0898", "0901", "0911",
    "0917", "0931", "0937", "0941", "0951", "0971", "0991", "0996",
]


def landline():
    if R.random() < 0.45:
        area = R.choice(AREA3)
        local = R.choice("2345678") + rnd(DIGITS, 7)
    else:
        area = R.choice(AREA4)
        n = R.choice([7, 8])
        local = R.choice("2345678") + rnd(DIGITS, n - 1)
    a = area[1:]
    l1, l2 = (local[:4], local[4:]) if len(local) == 8 else (local[:3], local[3:])
    forms = [
        f"{area}-{local}", f"{area}-{local}", f"{area} {local}", f"({area}){local}",
        f"({area}) {local}", f"（{area}）{local}", f"{area}-{l1}-{l2}", f"{area} {l1} {l2}",
        f"+86 {a} {local}", f"+86-{a}-{local}", f"+86 {a} {l1} {l2}", f"0086 {a} {local}",
        f"0086-{a}-{local}", f"+86 ({a}) {local}", f"+86{a}{local}", f"{area}{local}",
        f"{area}-{l1} {l2}",
    ]
    return maybe_fw(R.choice(forms), 0.08)


PROVINCES = [11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46,
             50, 51, 52, 53, 54, 61, 62, 63, 64, 65]
W = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]


def id_check(s17):
    return "10X98765432"[sum(int(c) * w for c, w in zip(s17, W)) % 11]


def rand_date(y0=1950, y1=2012):
    y = R.randint(y0, y1)
    m = R.randint(1, 12)
    d = R.randint(1, 28)
    return y, m, d


def id18_body():
    region = f"{R.choice(PROVINCES)}{R.randint(1, 99):02d}{R.randint(1, 99):02d}"
    y, m, d = rand_date()
    return region + f"{y:04d}{m:02d}{d:02d}" + rnd(DIGITS, 3)


def id_card():
    if R.random() < 0.1:
        region = f"{R.choice(PROVINCES)}{R.randint(1, 99):02d}{R.randint(1, 99):02d}"
        y, m, d = rand_date(1930, 1984)
        return region + f"{y % 100:02d}{m:02d}{d:02d}" + rnd(DIGITS, 3)
    body = id18_body()
    v = body + id_check(body)
    if v[-1] == "X" and R.random() < 0.3:
        v = v[:-1] + "x"
    forms = [v, v, v, v, f"{v[:6]} {v[6:14]} {v[14:]}", f"{v[:6]}-{v[6:14]}-{v[14:]}",
             f"{v[:6]} {v[6:10]} {v[10:14]} {v[14:]}"]
    return maybe_fw(R.choice(forms), 0.08)


def luhn_complete(prefix, length):
    body = prefix + rnd(DIGITS, length - len(prefix) - 1)
    total = 0
    for i, c in enumerate(reversed(body)):
        v = int(c)
        if i % 2 == 0:
            v *= 2
            if v > 9:
                v -= 9
        total += v
    return body + str((10 - total % 10) % 10)


def luhn_ok(s):
    total = 0
    for i, c in enumerate(reversed(s)):
        v = int(c)
        if i % 2 == 1:
            v *= 2
            if v > 9:
                v -= 9
        total += v
    return total % 10 == 0


def bank_card():
    kind = R.random()
    if kind < 0.45:
        v = luhn_complete(R.choice(["622202", "622848", "621700", "622588", "620522", "623058",
                                    "625911", "621226"]), R.choice([16, 19, 19]))
    elif kind < 0.7:
        v = luhn_complete("4" + rnd(DIGITS, 5), 16)
    elif kind < 0.85:
        v = luhn_complete(R.choice(["51", "52", "53", "54", "55", "2221", "2720"]), 16)
    elif kind < 0.93:
        v = luhn_complete(R.choice(["34", "37"]), 15)
        forms = [v, f"{v[:4]} {v[4:10]} {v[10:]}", f"{v[:4]}-{v[4:10]}-{v[10:]}"]
        return maybe_fw(R.choice(forms))
    else:
        v = luhn_complete(R.choice(["3528", "3566", "3589"]), 16)
    groups = [v[i:i + 4] for i in range(0, len(v), 4)]
    forms = [v, v, " ".join(groups), "-".join(groups)]
    if len(v) == 19:
        forms.append(f"{v[:6]} {v[6:]}")
    return maybe_fw(R.choice(forms))


GIVEN = ["zhang.san", "li.si", "wangwei", "liu_yang", "chen.jing", "j.smith", "alice", "bob.lee",
         "maria.garcia", "zhaolei88", "sunny_w", "huang.min", "dev-ops", "hr", "yang.fan2020",
         "qiang.xu", "emma.w+news", "t.nguyen", "li-na", "xiaoming1999"]
DOMAINS = ["example.com", "qq.com", "163.com", "126.com", "gmail.com", "outlook.com",
           "company.cn", "mail.tsinghua.edu.cn", "corp.example.co.uk", "sina.com.cn",
           "foxmail.com", "yahoo.co.jp", "fintech-startup.io", "hospital.org.cn", "aliyun.com"]


def email():
    local = R.choice(GIVEN)
    if R.random() < 0.2:
        local = rnd(DIGITS, R.randint(6, 11))
    v = f"{local}@{R.choice(DOMAINS)}"
    if R.random() < 0.05:
        return fw(v)
    if R.random() < 0.1:
        return v.upper() if R.random() < 0.3 else v.capitalize()
    return v


def ipv4():
    first = R.choice([10, 172, 192, 8, 47, 101, 114, 120, 203, 223, 58, 36])
    return f"{first}.{R.randint(0, 255)}.{R.randint(0, 255)}.{R.randint(1, 254)}"


def ipv6():
    groups = [f"{R.randint(0, 0xffff):x}" for _ in range(8)]
    kind = R.random()
    if kind < 0.3:
        return ":".join(groups)
    if kind < 0.6:
        return "2001:db8:" + ":".join(groups[:2]) + "::" + groups[7]
    if kind < 0.8:
        return "fe80::" + ":".join(groups[4:])
    return "240e:" + ":".join(groups[1:4]) + "::" + groups[6]


def passport():
    kind = R.random()
    if kind < 0.35:
        return "E" + rnd(DIGITS, 8)
    if kind < 0.5:
        return "E" + R.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") + rnd(DIGITS, 7)
    if kind < 0.6:
        return "G" + rnd(DIGITS, 8)
    if kind < 0.7:
        return R.choice(["DE", "SE", "PE"]) + rnd(DIGITS, 7)
    if kind < 0.8:
        return R.choice("DSP") + rnd(DIGITS, 7 if R.random() < 0.3 else 8)
    # HK/Macau and Taiwan travel permits (with context): C/H/M/L + 8 digits, C + letter + 7.
    if kind < 0.9:
        return R.choice("CHML") + rnd(DIGITS, 8)
    return "C" + R.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") + rnd(DIGITS, 7)


def ssn(dashed=True):
    area = R.randint(1, 899)
    while area == 666:
        area = R.randint(1, 899)
    v = (f"{area:03d}", f"{R.randint(1, 99):02d}", f"{R.randint(1, 9999):04d}")
    if dashed:
        return R.choice(["-".join(v), "-".join(v), " ".join(v)])
    return "".join(v)


# ---------------------------------------------------------------- secrets


def sk_key():
    kind = R.random()
    if kind < 0.35:
        return "sk-" + rnd("0123456789abcdef", 32)  # DeepSeek
    if kind < 0.55:
        return "sk-" + rnd(ALNUM, 48)  # OpenAI (legacy)
    if kind < 0.75:
        return "sk-proj-" + rnd(URLSAFE, R.choice([48, 74, 124]))
    return "sk-ant-api03-" + rnd(URLSAFE, 93) + "AA"  # Anthropic


def provider_key():
    kind = R.randrange(12)
    if kind == 0:
        return R.choice(["sk_live_", "rk_live_", "sk_test_"]) + rnd(ALNUM, R.choice([24, 34, 99]))
    if kind == 1:
        return "AIza" + rnd(URLSAFE, 35)
    if kind == 2:
        return "LTAI" + rnd(ALNUM, R.choice([12, 16, 20]))
    if kind == 3:
        return "AKID" + rnd(ALNUM, 32)
    if kind == 4:
        return R.choice(["ghp_", "gho_", "ghs_", "ghu_"]) + rnd(ALNUM, 36)
    if kind == 5:
        return "github_pat_" + rnd(ALNUM, 22) + "_" + rnd(ALNUM, 59)
    if kind == 6:
        return "glpat-" + rnd(URLSAFE, 20)
    if kind == 7:
        return R.choice(["xoxb-", "xoxp-"]) + rnd(DIGITS, 12) + "-" + rnd(DIGITS, 13) + "-" + rnd(ALNUM, 24)
    if kind == 8:
        return "hf_" + rnd(ALNUM, 34)
    if kind == 9:
        return "xapp-1-" + rnd(UPPER_DIGITS, 11) + "-" + rnd(DIGITS, 13) + "-" + rnd("0123456789abcdef", 64)
    return sk_key()


def aws_key_id():
    return R.choice(["AKIA", "ASIA"]) + rnd(UPPER_DIGITS, 16)


def aws_secret():
    return rnd(B64, 40)


def jwt():
    import base64

    def b64(obj):
        return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode().rstrip("=")

    head = b64({"alg": R.choice(["HS256", "RS256"]), "typ": "JWT"})
    body = b64({"sub": rnd(DIGITS, 8), "name": R.choice(["alice", "bob", "张三"]), "iat": 1718438400})
    return f"{head}.{body}.{rnd(URLSAFE, 43)}"


def private_key():
    label = R.choice(["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY",
                      "ENCRYPTED PRIVATE KEY"])
    lines = [rnd(B64, 64) for _ in range(R.randint(2, 5))] + [rnd(B64, R.randint(8, 40)) + "=="]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----"


def webhook():
    kind = R.randrange(5)
    if kind == 0:
        return f"https://hooks.slack.com/services/T{rnd(UPPER_DIGITS, 8)}/B{rnd(UPPER_DIGITS, 10)}/{rnd(ALNUM, 24)}"
    if kind == 1:
        return f"https://oapi.dingtalk.com/robot/send?access_token={rnd('0123456789abcdef', 64)}"
    if kind == 2:
        u = rnd("0123456789abcdef", 32)
        return f"https://open.feishu.cn/open-apis/bot/v2/hook/{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}"
    if kind == 3:
        u = rnd("0123456789abcdef", 32)
        return f"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}"
    return f"https://discord.com/api/webhooks/{rnd(DIGITS, 18)}/{rnd(URLSAFE, 68)}"


def password():
    kind = R.random()
    if kind < 0.3:
        return rnd(ALNUM, R.randint(8, 16))
    if kind < 0.55:
        return R.choice(["Passw0rd!", "Zhang@2024", "qwe123!@#", "Admin#8899", "Summer2023$",
                         "hunter2x9", "P@ssword123", "Li_na1988", "Tt20240615!", "abc123456"])
    if kind < 0.75:
        return rnd(DIGITS, R.choice([6, 8]))
    return rnd(ALNUM + "!@#$%^&*", R.randint(10, 20))


def url_password():
    """A password as written in a URL's user info (an `@` would have to be percent-encoded)."""
    return (password() if R.random() < 0.5 else high_entropy_token()[:20]).replace("@", "_")


def high_entropy_token():
    return rnd(R.choice([ALNUM, "0123456789abcdef", URLSAFE]), R.choice([24, 32, 40, 64]))


# ---------------------------------------------------------------- hard negatives


def invoice_code():
    """A VAT invoice code (10 or 12 digits), number (8), all-electronic number (20) or the
    20-digit check code, as printed on Chinese invoices."""
    kind = R.randrange(5)
    region = R.choice(["1100", "3100", "4403", "4400", "3201", "3301", "5101", "4201"])
    if kind == 0:
        return R.choice("01") + region + f"{R.randint(18, 24):02d}" + rnd(DIGITS, 5)
    if kind == 1:
        return region + f"{R.randint(18, 24):02d}" + rnd(DIGITS, 4)
    if kind == 2:
        return f"{R.randint(22, 25):02d}" + region[:2] + rnd(DIGITS, 16)
    if kind == 3:
        while True:  # the traps: check codes that look like Luhn-valid cards in groups
            v = R.choice("3456") + rnd(DIGITS, 19)
            if luhn_ok(v[:15]) or luhn_ok(v[5:20]) or luhn_ok(v[:16]) or R.random() < 0.3:
                break
        return " ".join(v[i:i + 5] for i in range(0, 20, 5))
    return rnd(DIGITS, 8)


def bad_id():
    body = id18_body()
    good = id_check(body)
    if R.random() < 0.5:
        bad = R.choice([c for c in "0123456789X" if c != good])
        return body + bad
    # A valid checksum over an impossible date (month 13 or day 32).
    b = body[:10] + R.choice(["13", "00", "14"]) + body[12:]
    return b + id_check(b)


def order_number():
    kind = R.randrange(5)
    if kind == 0:
        return "2024" + f"{R.randint(1, 12):02d}{R.randint(1, 28):02d}" + rnd(DIGITS, 10)
    if kind == 1:
        return R.choice(["SF", "YT", "JD", "ZTO"]) + rnd(DIGITS, 13)
    if kind == 2:
        return "E" + rnd(DIGITS, 3) + "-" + rnd(DIGITS, 6)
    if kind == 3:
        return "PO-" + rnd(DIGITS, 10)
    return rnd(DIGITS, 16) + rnd(DIGITS, 4)


def timestamp():
    return R.choice([str(R.randint(1_600_000_000, 1_800_000_000)),
                     str(R.randint(1_600_000_000_000, 1_800_000_000_000)),
                     f"2024-{R.randint(1, 12):02d}-{R.randint(1, 28):02d} {R.randint(0, 23):02d}:{R.randint(0, 59):02d}:{R.randint(0, 59):02d}"])


def version():
    return R.choice([
        f"{R.randint(1, 12)}.{R.randint(0, 20)}.{R.randint(0, 30)}.{R.randint(0, 200)}",
        f"{R.randint(1, 4)}.{R.randint(0, 9)}.{R.randint(0, 9)}.{R.randint(0, 9)}",
    ])


def file_at():
    return R.choice([
        f"icon@{R.choice('23')}x.png", f"logo@2x.{R.choice(['jpg', 'webp', 'svg'])}",
        f"banner_{R.randint(1, 9)}@3x.png", f"report@v{R.randint(2, 9)}.pdf",
        f"photo@2x.jpeg", f"avatar@{R.randint(64, 256)}.gif", f"data@backup.zip",
    ])


def secret_placeholder():
    return R.choice([
        "sk-" + "x" * R.choice([24, 32, 48]), "sk-your-key-here", "sk-" + "X" * 32,
        "sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "sk-proj-" + "x" * 40,
        "your-key-here", "YOUR_API_KEY", "<your-api-key>", "AKIA" + "X" * 16,
        "sk_live_" + "x" * 24, "ghp_" + "x" * 36, "sk-1234567890abcdef1234567890abcdef",
        "sk-abcdefghijklmnopqrstuvwxyz123456", "sk-" + "0" * 32, "sk-****************************",
        "glpat-xxxxxxxxxxxxxxxxxxxx", "AIza" + "X" * 35, "hf_" + "x" * 34,
    ])


def hash_like():
    return rnd("0123456789abcdef", R.choice([32, 40, 64]))


def uuid():
    u = rnd("0123456789abcdef", 32)
    return f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}"


# ---------------------------------------------------------------- sentences
# `{}` is the value. Context words are part of the sentence, as people write them.

T = {
    "CN_MOBILE": [
        "我的手机号是{}，有事随时联系。", "请拨打{}联系张经理。", "联系电话：{}（工作日9:00-18:00）",
        "Call me at {} after 6pm.", "My cell is {}, text me anytime.", "客户说他的号码是 {} ，please call back",
        "收货人：王女士，{}，上海市浦东新区", "手机{}", "{} 是我老婆的电话", "WhatsApp/微信同号 {}",
        "If urgent, reach Li Wei on {}.", "紧急联系人 {}，关系：父亲", "麻烦加一下微信，手机号{}。",
    ],
    "CN_LANDLINE": [
        "办公室电话：{}，转分机 205。", "请致电{}咨询。", "座机 {}", "Office line: {} (ask for Ms. Chen).",
        "公司总机{}，传真同号。", "Please call our Beijing office at {}.", "家里座机是{}，白天没人接。",
        "客服热线 {} 工作时间 8:30-17:30", "联系方式：{}（前台）", "The hotel's number is {}.",
        "tel: {}", "门诊电话{}，周末休息", "麻烦打这个电话 {} 找刘老师",
    ],
    "CN_ID_CARD": [
        "身份证号：{}", "我的身份证号码是{}，请核对。", "ID card number {} for the hotel booking.",
        "乘车人身份证 {} 已登记", "请帮我看看这个身份证号 {} 是不是有效的", "证件号码{}，有效期至2030年",
        "Passenger ID: {}", "客户身份证为 {} ，办理开户", "投保人证件号：{}。",
    ],
    "BANK_CARD": [
        "卡号：{}", "请把钱转到我的银行卡{}，谢谢", "Card number {} exp 08/27", "工资卡 {} 开户行招商银行",
        "My Visa card {} was charged twice.", "退款请打到 {} （建设银行）", "信用卡号{}，请帮我查一下账单",
        "收款账号：{}", "please refund to card {}.",
    ],
    "EMAIL": [
        "邮箱：{}", "请发邮件到{}，谢谢。", "Contact {} for details.", "我的邮箱是 {} ，有问题随时找我",
        "cc: {}", "Email me at {}.", "简历请投递至{}（注明应聘岗位）", "reply to <{}> please",
        "注册邮箱 {} 收不到验证码", "Send the invoice to {}, not to me.",
    ],
    "IPV4": [
        "服务器IP是{}，端口8080", "ssh root@{} -p 22", "The request came from {}.",
        "请把 {} 加入白名单", "ping {} 不通", "upstream server {}:443 timed out",
        "数据库地址 {}，用户名 readonly", "curl http://{}/health returned 502", "本机地址{}。",
    ],
    "IPV6": [
        "IPv6 地址：{}", "ping6 {} 超时", "client [{}]:443 connected", "The host resolves to {}.",
        "请放行 {} 这个地址", "bind address {}",
    ],
    "CN_PASSPORT": [
        "护照号码：{}", "我的护照号是{}，下个月到期", "Passport No. {} issued in Beijing.",
        "passport number: {}", "护照 {} 已办理签证", "旅客护照号{}，请核对",
        "往来港澳通行证号码：{}", "通行证号 {}", "travel permit no. {}", "台胞证号码{}",
        "回乡证号码 {}", "公务护照号码{}", "外交护照 {}", "证件类型：护照，证件号：{}",
    ],
    "US_SSN": [
        "SSN: {}", "Social Security Number {} on the W-2 form.", "my ssn is {}",
        "社会安全号码（SSN）：{}", "Employee SSN {} needs correction.", "SSN#{}",
        "social security no. {}", "他的美国社安号是{}",
    ],
    "API_KEY": [
        "我的API key是{}，为什么调用报401？", "api_key = \"{}\"", "export OPENAI_API_KEY={}",
        "Authorization: Bearer {}", "用这个key试试：{}", "DEEPSEEK_API_KEY={} python main.py",
        "I accidentally committed {} to GitHub, what should I do?", "{}", "key: {}",
        "config.yaml 里写的是 token: {}", "client = OpenAI(api_key='{}')", "帮我看看 {} 这个 token 还有效吗",
        "Stripe 后台拿到的 {}", "headers = {{\"x-api-key\": \"{}\"}}",
    ],
    "AWS_ACCESS_KEY": [
        "AWS_ACCESS_KEY_ID={}", "access key id: {}", "我的 AccessKeyId 是 {}", "aws configure 时填的 {}",
        "IAM user key {} was leaked",
    ],
    "JWT": [
        "Authorization: Bearer {}", "token={}", "这个JWT解不开：{}", "cookie: session={}; path=/",
        "decode this: {}",
    ],
    "PRIVATE_KEY": [
        "这是我的私钥：\n{}\n帮我看看格式对不对", "id_rsa:\n{}\n", "```\n{}\n```",
        "My key file contains\n{}\nis it valid?",
    ],
}

SECRET_T = {
    "password": [
        "数据库密码：{}", "password={}", "我的密码是{}，帮我登录一下", "root 密码 {}",
        "\"password\": \"{}\"", "pwd: {}", "wifi密码是 {} ", "PASSWORD='{}'", "登录口令：{}",
        "the admin password is {} by the way",
    ],
    "token": [
        "token: {}", "access_token={}", "client_secret: \"{}\"", "secret = {}",
        "我的令牌是 {}", "密钥：{}", "API_TOKEN={}", "app secret {}", "SecretKey: {}",
        "\"refresh_token\": \"{}\"", "auth token is {}",
    ],
}

NEUTRAL = [
    "请帮我写一首关于春天的诗，要求8行，每行7个字。", "Summarise the attached report in three bullet points.",
    "会议改到下午3点，地点在3楼会议室。", "今天北京气温32度，注意防暑。", "Can you translate this into English?",
    "我们Q3的目标是营收增长15%。", "Please review PR #482 before Friday.", "第2章第3节讲的是排序算法。",
    "预算大约120万元，分三期支付。", "Meeting notes: 1) budget 2) hiring 3) roadmap for 2025.",
    "帮我把这段话改得更正式一点。", "The train leaves at 08:45 from platform 6.",
]

NEG_T = {
    "invoice": [
        "发票代码：{}", "发票号码 {}", "请核对发票代码{}和金额", "电子发票号码：{}", "校验码：{}",
        "invoice code {} on the VAT fapiao", "发票校验码 {} 后五位看不清",
    ],
    "bad_id": [
        "这个身份证号{}校验不通过，是不是写错了？", "身份证号：{}（系统提示无效）", "ID {} is rejected by the form.",
        "流水号 {}", "编号{}",
    ],
    "order": [
        "订单号：{}", "快递单号{}，明天到", "order #{} shipped", "你的订单 {} 已发货", "流水号{}",
        "tracking number {}", "合同编号：{}",
    ],
    "timestamp": [
        "created_at={}", "时间戳 {}", "日志时间：{}", "ts: {}", "expires {}",
    ],
    "version": [
        "版本 {}", "升级到 v{} 之后就报错了", "固件版本{}", "version {} is out", "Chrome {} 打不开",
        "当前版本号：{}", "firmware {} breaks wifi", "build {} passed", "ver. {}", "安装包 app-{}.apk",
    ],
    "file_at": [
        "把 {} 放到 assets 目录", "图片 {} 显示模糊", "missing file {}", "下载 {} 看看",
    ],
    "placeholder": [
        "api_key = \"{}\"", "把 {} 换成你自己的key", "OPENAI_API_KEY={}", "Authorization: Bearer {}",
        "示例：key={}", "replace {} with your key", "token: {}", "password: {}",
    ],
    "hash": [
        "commit {}", "sha256: {}", "文件MD5 {}", "request id {}", "trace_id={}", "git checkout {}",
        "校验和 {}",
    ],
    "uuid": [
        "request_id: {}", "会话ID {}", "uuid={}", "设备编号 {}",
    ],
    "ssn_like": [
        "QQ号{}", "order {} received", "工号 {}", "邮编 {} 附近", "共计 {} 元",
    ],
}


def neg_value(kind):
    if kind == "invoice":
        return invoice_code()
    if kind == "bad_id":
        return bad_id()
    if kind == "order":
        return order_number()
    if kind == "timestamp":
        return timestamp()
    if kind == "version":
        return version()
    if kind == "file_at":
        return file_at()
    if kind == "placeholder":
        return secret_placeholder()
    if kind == "hash":
        return hash_like()
    if kind == "uuid":
        return uuid()
    if kind == "ssn_like":
        return rnd("123456789", 1) + rnd(DIGITS, R.choice([5, 8]))
    raise ValueError(kind)


def pos_value(t):
    return {
        "CN_MOBILE": mobile, "CN_LANDLINE": landline, "CN_ID_CARD": id_card, "BANK_CARD": bank_card,
        "EMAIL": email, "IPV4": ipv4, "IPV6": ipv6, "CN_PASSPORT": passport,
        "US_SSN": lambda: ssn(R.random() < 0.6), "AWS_ACCESS_KEY": aws_key_id, "JWT": jwt,
        "PRIVATE_KEY": private_key,
        "API_KEY": lambda: sk_key() if R.random() < 0.4 else provider_key(),
    }[t]()


class Line:
    def __init__(self):
        self.parts = []
        self.n = 0
        self.spans = []
        self.negs = []

    def text(self, s):
        self.parts.append(s)
        self.n += len(s.encode())

    def value(self, s, label, neg=False):
        start = self.n
        self.text(s)
        (self.negs if neg else self.spans).append([start, self.n, label])

    def template(self, tmpl, value, label, neg=False):
        before, after = tmpl.split("{}", 1)
        self.text(before.replace("{{", "{").replace("}}", "}"))
        self.value(value, label, neg)
        self.text(after.replace("{{", "{").replace("}}", "}"))

    def dump(self):
        return {"text": "".join(self.parts), "spans": self.spans, "negatives": self.negs}


def positive(line, t):
    if t == "SECRET":
        kind = R.randrange(6)
        if kind == 0:
            line.template(R.choice(SECRET_T["password"]), password(), "SECRET")
        elif kind == 1:
            line.template(R.choice(SECRET_T["token"]), high_entropy_token(), "SECRET")
        elif kind == 2:
            line.template(R.choice(["通知机器人 webhook：{}", "SLACK_WEBHOOK_URL={}", "POST {} with the alert",
                                    "钉钉机器人地址 {} 每天推送日报"]), webhook(), "SECRET")
        elif kind == 3:
            user = R.choice(["admin", "root", "app", "readonly", "dev"])
            host = R.choice(["db.internal.example.com", "10.0.3.15", "pg-prod.company.cn", "localhost",
                             "cluster0.ab1cd.mongodb.net"])
            scheme = R.choice(["postgres", "postgresql", "mysql", "mongodb+srv", "redis", "amqp"])
            line.text(R.choice(["DATABASE_URL=", "连接串：", "conn = \"", "use ", "数据库连接 "]))
            line.text(f"{scheme}://{user}:")
            line.value(url_password(), "SECRET")
            if host == "10.0.3.15":
                line.text("@")
                line.value(host, "IPV4")
                line.text(R.choice([":5432/app", ":3306/shop", "/prod"]))
            else:
                line.text(f"@{host}" + R.choice([":5432/app", ":3306/shop", "/prod", ""]))
            line.text(R.choice(["", "\"", " 连不上", " fails with timeout"]))
        elif kind == 4:
            user = R.choice(["admin", "deploy", "jenkins", "ci"])
            line.text(R.choice(["git clone ", "curl ", "打开 ", "registry: "]))
            line.text(f"https://{user}:")
            line.value(url_password(), "SECRET")
            line.text(R.choice(["@git.example.com/team/repo.git", "@nexus.corp.cn/repository/",
                                "@registry.example.io/v2/"]))
        else:
            idv = aws_key_id()
            sec = aws_secret()
            style = R.randrange(3)
            if style == 0:
                line.text("aws_access_key_id = ")
                line.value(idv, "AWS_ACCESS_KEY")
                line.text("\naws_secret_access_key = ")
                line.value(sec, "SECRET")
            elif style == 1:
                line.text("AccessKeyId: ")
                line.value(idv, "AWS_ACCESS_KEY")
                line.text("，SecretAccessKey: ")
                line.value(sec, "SECRET")
            else:
                line.text("key ")
                line.value(idv, "AWS_ACCESS_KEY")
                line.text(" secret ")
                line.value(sec, "SECRET")
        return
    line.template(R.choice(T[t]), pos_value(t), t)


TYPES = ["CN_MOBILE", "CN_LANDLINE", "CN_ID_CARD", "BANK_CARD", "EMAIL", "IPV4", "IPV6",
         "CN_PASSPORT", "US_SSN", "API_KEY", "AWS_ACCESS_KEY", "JWT", "PRIVATE_KEY", "SECRET"]
WEIGHTS = [14, 14, 10, 10, 8, 6, 4, 10, 7, 12, 3, 3, 2, 12]
NEG_KINDS = list(NEG_T)
SEPS = [" ", "，", "。", "; ", "\n", "；另外，", " and ", "，还有 "]


def main():
    out = []
    for _ in range(3200):
        line = Line()
        if R.random() < 0.3:
            line.text(R.choice(NEUTRAL) + " ")
        n = R.choice([1, 1, 1, 2, 2, 3])
        for k in range(n):
            if k:
                line.text(R.choice(SEPS))
            if R.random() < 0.25:
                kind = R.choice(NEG_KINDS)
                line.template(R.choice(NEG_T[kind]), neg_value(kind), kind, neg=True)
            else:
                positive(line, R.choices(TYPES, WEIGHTS)[0])
        if R.random() < 0.3:
            line.text(" " + R.choice(NEUTRAL))
        out.append(line.dump())
    for _ in range(1000):
        line = Line()
        kind = R.choice(NEG_KINDS)
        if R.random() < 0.4:
            line.text(R.choice(NEUTRAL) + " ")
        line.template(R.choice(NEG_T[kind]), neg_value(kind), kind, neg=True)
        out.append(line.dump())
    for _ in range(200):
        line = Line()
        line.text(R.choice(NEUTRAL) + " " + R.choice(NEUTRAL))
        out.append(line.dump())
    R.shuffle(out)
    w = sys.stdout
    for o in out:
        w.write(json.dumps(o, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
