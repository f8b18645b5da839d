//! Positives in every notation and hard negatives for each built-in detector.

use tower_deepseek_redact::{Detectors, EntityType};

fn found(text: &str) -> Vec<(String, String)> {
    Detectors::all()
        .detect(text)
        .into_iter()
        .map(|d| (d.entity.to_string(), text[d.range].to_string()))
        .collect()
}

#[track_caller]
fn one(text: &str, entity: EntityType, value: &str) {
    assert_eq!(
        found(text),
        vec![(entity.to_string(), value.to_string())],
        "in {text:?}"
    );
}

#[track_caller]
fn none(text: &str) {
    assert_eq!(found(text), Vec::<(String, String)>::new(), "in {text:?}");
}

#[test]
fn cn_mobile_notations() {
    for v in [
        "13800138000",
        "138 0013 8000",
        "138-0013-8000",
        "+8613800138000",
        "+86 138 0013 8000",
        "+86-138-0013-8000",
        "008613800138000",
        "0086 13800138000",
        "１３８００１３８０００",
        "１３８－００１３－８０００",
        "＋８６ １３８ ００１３ ８０００",
        "19912345678",
    ] {
        one(&format!("我的手机是{v}，请回电"), EntityType::CN_MOBILE, v);
        one(&format!("call {v}."), EntityType::CN_MOBILE, v);
        one(v, EntityType::CN_MOBILE, v);
    }
}

#[test]
fn cn_mobile_negatives() {
    none("12800138000"); // 12x is not a mobile prefix
    none("order 138001380001234 shipped"); // inside a longer digit run
    none("ID13800138000"); // glued to letters
    none("13800138000abc");
    none("1380013800"); // 10 digits
    none("timestamp 1700000000000"); // ms timestamp
    none("订单号2024061513800138"); // order number
}

#[test]
fn cn_id_card() {
    for v in [
        "11010519491231002X",
        "11010519491231002x",
        "440524188001010014",
        "110105491231002",
    ] {
        one(&format!("身份证号{v}。"), EntityType::CN_ID_CARD, v);
    }
    // Full-width digits.
    one(
        "身份证１１０１０５１９４９１２３１００２Ｘ",
        EntityType::CN_ID_CARD,
        "１１０１０５１９４９１２３１００２Ｘ",
    );
    none("110105194912310021"); // wrong check digit
    none("110105194913310028"); // month 13
    none("110105194902300020"); // 30 February
    none("990105194912310023"); // region 99
    none("110105491331002"); // legacy, month 13
    none("A11010519491231002X");
}

#[test]
fn bank_cards() {
    for v in [
        "4111111111111111",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "6222021234567890128", // UnionPay 19 digits (Luhn-valid)
        "378282246310005",     // Amex 15
        "5555555555554444",
    ] {
        let t = format!("card: {v} thanks");
        let got = found(&t);
        assert_eq!(got.len(), 1, "{t}: {got:?}");
        assert_eq!(got[0].1, v);
        assert_eq!(got[0].0, "BANK_CARD", "{t}");
    }
    none("4111111111111112"); // Luhn fails
    none("4111 1111-1111 1111"); // mixed separators
    none("order 94111111111111111"); // invalid prefix and length
}

#[test]
fn email() {
    for v in [
        "zhang.san@example.com",
        "a+b@mail.example.co.uk",
        "13800138000@163.com",
    ] {
        one(&format!("写信到{v}，谢谢"), EntityType::EMAIL, v);
    }
    one("mail me at x@y.org.", EntityType::EMAIL, "x@y.org");
    one(
        "邮箱：ｚｈａｎｇ＠ｅｘａｍｐｌｅ．ｃｏｍ",
        EntityType::EMAIL,
        "ｚｈａｎｇ＠ｅｘａｍｐｌｅ．ｃｏｍ",
    );
    none("user@localhost");
    none("@handle on twitter");
    none("a@b.c1");
}

#[test]
fn ip_addresses() {
    one(
        "server 192.168.1.10 is down",
        EntityType::IPV4,
        "192.168.1.10",
    );
    one(
        "v6 2001:db8::8a2e:370:7334 ok",
        EntityType::IPV6,
        "2001:db8::8a2e:370:7334",
    );
    one("loopback ::1.", EntityType::IPV6, "::1");
    one(
        "fe80::1ff:fe23:4567:890a,",
        EntityType::IPV6,
        "fe80::1ff:fe23:4567:890a",
    );
    none("version 1.2.3.4.5");
    none("256.1.1.1");
    none("at 12:30:45 today");
    none("use std::vector here");
    none("Foo::bar()");
}

#[test]
fn passport_landline_ssn() {
    one("护照E12345678号", EntityType::CN_PASSPORT, "E12345678");
    one("passport G87654321.", EntityType::CN_PASSPORT, "G87654321");
    one("护照EA1234567", EntityType::CN_PASSPORT, "EA1234567");
    none("model XE12345678");
    one("电话010-12345678", EntityType::CN_LANDLINE, "010-12345678");
    one(
        "电话(021)87654321",
        EntityType::CN_LANDLINE,
        "(021)87654321",
    );
    one("电话0755 1234567", EntityType::CN_LANDLINE, "0755 1234567");
    one(
        "电话（０１０）１２３４５６７８",
        EntityType::CN_LANDLINE,
        "（０１０）１２３４５６７８",
    );
    none("代码010-1234567"); // Beijing numbers have 8 digits
    none("01-12345678");
    one("SSN 123-45-6789.", EntityType::US_SSN, "123-45-6789");
    none("SSN 000-45-6789");
    none("SSN 666-45-6789");
    none("SSN 900-45-6789");
    none("SSN 123-00-6789");
    none("SSN 123-45-0000");
    none("date 2024-06-15");
}

#[test]
fn secrets() {
    let key = "sk-4f8e2a9c1b3d5e7f9a0b2c4d6e8f0a1b";
    one(&format!("key={key}"), EntityType::API_KEY, key);
    one(&format!("\"{key}\""), EntityType::API_KEY, key);
    none("task-4f8e2a9c1b3d5e7f9a0b2c4d6e8f0a1b");
    none("sk-short");
    one(
        "AKIAIOSFODNN7EXAMPLE here",
        EntityType::AWS_ACCESS_KEY,
        "AKIAIOSFODNN7EXAMPLE",
    );
    one(
        "ASIAY34FZKBOKMUTVV7A",
        EntityType::AWS_ACCESS_KEY,
        "ASIAY34FZKBOKMUTVV7A",
    );
    none("AKIAIOSFODNN7EXAMPLEX");
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    one(&format!("Bearer {jwt}"), EntityType::JWT, jwt);
    let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA1234\nabcd==\n-----END RSA PRIVATE KEY-----";
    one(
        &format!("key:\n{pem}\nthanks"),
        EntityType::PRIVATE_KEY,
        pem,
    );
    let open = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n";
    assert_eq!(found(open)[0].0, "PRIVATE_KEY");
    none("-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----");
}

#[test]
fn several_in_one_text_and_priority() {
    let t = "张三，手机13800138000，身份证11010519491231002X，邮箱zs@example.com，卡号6222021234567890128";
    let kinds: Vec<String> = found(t).into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ["CN_MOBILE", "CN_ID_CARD", "EMAIL", "BANK_CARD"]);
}

#[test]
fn custom_detectors() {
    let d = Detectors::builder()
        .custom("employee_id", r"EMP-[0-9]{6}")
        .custom_with("even", r"\bN[0-9]+\b", |m| {
            m[1..].parse::<u64>().is_ok_and(|n| n % 2 == 0)
        })
        .build()
        .unwrap();
    let t = "EMP-123456 N12 N13";
    let got: Vec<(String, &str)> = d
        .detect(t)
        .into_iter()
        .map(|x| (x.entity.to_string(), &t[x.range]))
        .collect();
    assert_eq!(
        got,
        [
            ("EMPLOYEE_ID".to_string(), "EMP-123456"),
            ("EVEN".to_string(), "N12")
        ]
    );
    let field =
        |b: tower_deepseek_redact::DetectorsBuilder| b.build().unwrap_err().field().to_owned();
    assert_eq!(field(Detectors::builder().custom("bad name", "x")), "name");
    assert_eq!(field(Detectors::builder().custom("X", "(")), "pattern");
    assert_eq!(field(Detectors::builder().custom("EMAIL", "x")), "name");
}

#[test]
fn disabled_detectors_do_not_match() {
    let d = Detectors::builder()
        .disable(&EntityType::CN_MOBILE)
        .build()
        .unwrap();
    assert!(d.detect("13800138000").is_empty());
    assert!(!d.is_enabled(&EntityType::CN_MOBILE));
}

#[test]
fn plain_chat_text_has_nothing() {
    none("今天是2024年6月15日，气温30度。Meeting at 10:30, room 4B, budget $1,200,000.");
    none("请帮我写一首关于春天的诗，要求8行，每行7个字。");
    none("Version 3.11.4 released; see PEP 8 and RFC 7231.");
}

#[test]
fn a_number_after_an_overlapping_winner_is_still_found() {
    // `::407` is an IPv6 address; `407 13800138000` would also pass as a card, but it overlaps
    // the address, which starts first: the mobile number after it must still be found.
    let got = found("::407 13800138000 ");
    assert_eq!(
        got,
        vec![
            ("IPV6".to_string(), "::407".to_string()),
            ("CN_MOBILE".to_string(), "13800138000".to_string())
        ]
    );
}

#[test]
fn cn_landline_notations() {
    for v in [
        "010-62345678",
        "010 6234 5678",
        "(010)62345678",
        "（010）62345678",
        "0755-8765 4321",
        "0571-8765432",
        "+86 10 6234 5678",
        "+86-755-87654321",
        "0086 21 62345678",
        "+86 (21) 62345678",
        "+8675587654321",
        "０７５５－８７６５４３２１",
    ] {
        one(
            &format!("办公室电话：{v}，转分机 205"),
            EntityType::CN_LANDLINE,
            v,
        );
        one(
            &format!("call our office at {v}."),
            EntityType::CN_LANDLINE,
            v,
        );
    }
    // One unbroken run of digits: a landline after a phone word, not after an invoice word.
    one("座机075587654321", EntityType::CN_LANDLINE, "075587654321");
    none("发票代码031001900104"); // local number would start with 0
    none("发票代码044031900111");
    none("0301-2345678"); // 030 is no area code
    none("0262-3456789"); // nor is 026
}

#[test]
fn ids_in_groups_and_checks() {
    for v in [
        "110105 19491231 002X",
        "110105-19491231-002X",
        "110105 1949 1231 002X",
    ] {
        one(&format!("身份证号：{v}。"), EntityType::CN_ID_CARD, v);
    }
    none("身份证号：110105 19491231 0021"); // check character
    none("身份证号：1101 0519491231 002X"); // not a grouping of an ID
    // An 18-digit number that fails the check but starts with a region and a birth date is
    // no card either, unless the text says so.
    none("ID 652662198908032062 is rejected by the form.");
    // A number after an order word is an order number, even if it passes the ID checks...
    none("订单号 440106199001011235 已发货");
    // ...unless the clause also names an ID.
    one(
        "订单联系人身份证号 440106199001011235",
        EntityType::CN_ID_CARD,
        "440106199001011235",
    );
}

#[test]
fn ssn_needs_context_without_dashes() {
    one("SSN 123456789", EntityType::US_SSN, "123456789");
    one(
        "social security no. 123456789.",
        EntityType::US_SSN,
        "123456789",
    );
    one("社会安全号码：123456789", EntityType::US_SSN, "123456789");
    one("SSN: 123 45 6789", EntityType::US_SSN, "123 45 6789");
    none("order 123456789 received");
    none("SSN 666456789");
    // The word names the number before, not this one.
    none_of("SSN#630-83-7302 QQ号610055854", "610055854");
}

#[track_caller]
fn none_of(text: &str, value: &str) {
    assert!(
        found(text).iter().all(|(_, v)| v != value),
        "{value} found in {text:?}: {:?}",
        found(text)
    );
}

#[test]
fn passport_series_and_permits() {
    for v in ["E12345678", "EH1234567", "G12345678"] {
        one(&format!("{v} 是护照号"), EntityType::CN_PASSPORT, v);
        one(&format!("no. {v}"), EntityType::CN_PASSPORT, v);
    }
    for v in ["DE1234567", "SE1234567", "PE1234567"] {
        one(&format!("护照号码：{v}"), EntityType::CN_PASSPORT, v);
    }
    // Diplomatic/service/public-affairs and travel permits need a context word.
    for v in [
        "D12345678",
        "S1234567",
        "P12345678",
        "C12345678",
        "CA1234567",
        "H12345678",
        "L12345678",
    ] {
        one(&format!("通行证号码：{v}"), EntityType::CN_PASSPORT, v);
        one(&format!("passport number {v}"), EntityType::CN_PASSPORT, v);
        none(&format!("model {v} in stock"));
    }
}

#[test]
fn cards_and_invoice_codes_are_kept_apart() {
    one(
        "卡号 4111 1111 1111 1111 08/27",
        EntityType::BANK_CARD,
        "4111 1111 1111 1111",
    );
    // A 20-digit invoice check code in groups of five: no 15-digit card inside.
    none("校验码：37828 22463 10005 12345");
    none("发票号码 378282246310005");
    none("订单号 4111111111111111");
    // 18 digits: no Visa card has 18.
    none("no. 411111111111111110");
    // Two cards one after the other: both are cards (the fuzzer's case: the second one went
    // upstream raw as the "tail" of the first).
    let both = found("4111 1111 1111 1111 5500 0000 0000 0004");
    assert_eq!(
        both,
        [
            ("BANK_CARD".to_owned(), "4111 1111 1111 1111".to_owned()),
            ("BANK_CARD".to_owned(), "5500 0000 0000 0004".to_owned()),
        ],
        "{both:?}"
    );
    let same = found("卡 \"x\" 4111 1111 1111 1111 4111 1111 1111 1111");
    assert_eq!(same.len(), 2, "{same:?}");
    let three = found("4111 1111 1111 1111 4111 1111 1111 1111 5500 0000 0000 0004");
    assert_eq!(three.len(), 3, "{three:?}");
    // After a phone number and one space (not a group of the card's run).
    let after_phone = found("13800138000 4111 1111 1111 1111");
    assert_eq!(after_phone.len(), 2, "{after_phone:?}");
    assert_eq!(after_phone[1].1, "4111 1111 1111 1111");
}

#[test]
fn versions_and_file_names_are_not_addresses() {
    for t in [
        "版本 2.3.1.0",
        "固件版本4.2.0.12",
        "version 1.2.3.4 is out",
        "ver. 10.1.16.200",
        "安装包 app-1.2.3.4.apk",
        "升级到 v1.2.3.4 之后",
    ] {
        none(t);
    }
    one(
        "server 10.1.16.200 is down",
        EntityType::IPV4,
        "10.1.16.200",
    );
    for t in [
        "icon@2x.png",
        "图片 logo@3x.webp 模糊",
        "report@v2.pdf",
        "avatar@128.gif",
    ] {
        none(t);
    }
    // The user info of a URL is not an e-mail address.
    one(
        "postgres://app:S3cr3t-pw@db.example.com:5432/app",
        EntityType::SECRET,
        "S3cr3t-pw",
    );
    one(
        "git clone https://ci:Admin#8899@git.example.com/team/repo.git",
        EntityType::SECRET,
        "Admin#8899",
    );
}

#[test]
fn provider_keys() {
    for v in [
        "sk-ant-api03-Ab3dEf5hIj7lMn9pQr1tUv3xYz5bCd7fGh9jKl1nOp3rSt5vWx7zAb9dEf1hIj3lMn5pQr7tUv9xYz1bCd3fGh5jKl7nOp9rSt1vWx3zAb5dEf7hIj9lMnAA",
        "sk-proj-Ab3dEf5hIj7lMn9pQr1tUv3xYz5bCd7fGh9jKl1nOp3rSt5vWx7zAb9dEf1h",
        "sk_live_51Hq3dEf5hIj7lMn9pQr1tUv",
        "rk_live_51Hq3dEf5hIj7lMn9pQr1tUv",
        "AIzaSyAb3dEf5hIj7lMn9pQr1tUv3xYz5bCd7fG",
        "LTAI5tAb3dEf5hIj7lMn9p",
        "AKIDAb3dEf5hIj7lMn9pQr1tUv3xYz5bCd7f",
        "ghp_Ab3dEf5hIj7lMn9pQr1tUv3xYz5bCd7fGh9j",
        "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bCd3fGh5jKl7n",
        "glpat-Ab3dEf5hIj7lMn9pQr1t",
        "xoxb-730948215563-4619027735184-Ab3dEf5hIj7lMn9pQr1tUv3x",
        "hf_Ab3dEf5hIj7lMn9pQr1tUv3xYz5bCd7fGh",
    ] {
        one(&format!("my key is {v}, thanks"), EntityType::API_KEY, v);
        one(&format!("api_key=\"{v}\""), EntityType::API_KEY, v);
    }
}

#[test]
fn placeholders_are_not_secrets() {
    for t in [
        "api_key = \"sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"",
        "OPENAI_API_KEY=sk-your-key-here",
        "OPENAI_API_KEY=your-key-here",
        "export KEY=YOUR_API_KEY",
        "sk-1234567890abcdef1234567890abcdef",
        "sk-abcdefghijklmnopqrstuvwxyz123456",
        "AKIAXXXXXXXXXXXXXXXX",
        "ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "password: ********",
        "token: <your-token>",
        "postgres://app:${DB_PASSWORD}@db.example.com/app",
        "the password is required",
        "token limit: 4096",
        "key points: revenue grew",
        "pwd: /home/app/releases",
        "max_tokens: 4096",
    ] {
        none(t);
    }
}

#[test]
fn secrets_by_context_and_webhooks() {
    one("数据库密码：Zhang@2024", EntityType::SECRET, "Zhang@2024");
    one("password=hunter2x9", EntityType::SECRET, "hunter2x9");
    one("我的密码是12345678", EntityType::SECRET, "12345678");
    one(
        "\"client_secret\": \"q8Xr2mZt9LkP4vNw7YhB3sJd\"",
        EntityType::SECRET,
        "q8Xr2mZt9LkP4vNw7YhB3sJd",
    );
    one(
        "app secret 6d8386c8e63f31ffa6fcafcf",
        EntityType::SECRET,
        "6d8386c8e63f31ffa6fcafcf",
    );
    let id = "AKIAY34FZKBOKMUTVV7A";
    let secret = "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";
    let got = found(&format!("{id}:{secret}"));
    assert_eq!(
        got,
        vec![
            ("AWS_ACCESS_KEY".to_string(), id.to_string()),
            ("SECRET".to_string(), secret.to_string())
        ]
    );
    for url in [
        "https://hooks.slack.com/services/T0ABCDEFG/B0ABCDEFGHI/Ab3dEf5hIj7lMn9pQr1tUv3x",
        "https://oapi.dingtalk.com/robot/send?access_token=4f8e2a9c1b3d5e7f9a0b2c4d6e8f0a1b4f8e2a9c1b3d5e7f9a0b2c4d6e8f0a1b",
        "https://open.feishu.cn/open-apis/bot/v2/hook/4f8e2a9c-1b3d-5e7f-9a0b-2c4d6e8f0a1b",
        "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=4f8e2a9c-1b3d-5e7f-9a0b-2c4d6e8f0a1b",
    ] {
        one(
            &format!("机器人地址 {url} 每天推送"),
            EntityType::SECRET,
            url,
        );
    }
    // Not secrets: a hash after a word that is not secret-like.
    none("commit 91795c828b41518119020db6fa217af51e222d51");
}

#[test]
fn scores_threshold_and_context_words() {
    let d = Detectors::all();
    let s = d.detect("SSN 123456789");
    assert_eq!(s.len(), 1);
    assert!(s[0].score >= d.min_score() && s[0].score <= 1.0);
    // Without the threshold, nine bare digits are a (weak) SSN.
    let low = Detectors::builder().min_score(0.2).build().unwrap();
    let s = low.detect("number 123456789");
    assert_eq!(s.len(), 1);
    assert!(s[0].score < 0.5);
    assert!(Detectors::builder().min_score(1.5).build().is_err());
    // Configured words in any language raise and lower scores.
    let d = Detectors::builder()
        .context_words(&EntityType::US_SSN, ["Steuernummer"])
        .negative_context_words(&EntityType::BANK_CARD, ["会员卡"])
        .build()
        .unwrap();
    assert_eq!(d.detect("steuernummer 123456789").len(), 1);
    assert!(d.detect("会员卡 4111111111111111").is_empty());
    assert_eq!(Detectors::all().detect("会员卡 4111111111111111").len(), 1);
}

#[test]
fn allow_mode_leaves_the_value_and_config_sets_policy() {
    use tower_deepseek_redact::{Mode, RedactConfig, RedactContext, RedactLayer, Redactor};
    let r = Redactor::builder()
        .mode(EntityType::IPV4, Mode::Allow)
        .build()
        .unwrap();
    let mut ctx = RedactContext::new(None);
    let out = r
        .redact("server 10.0.0.1, phone 13800138000", &mut ctx)
        .unwrap()
        .unwrap();
    assert_eq!(out, "server 10.0.0.1, phone <CN_MOBILE_1>");
    assert_eq!(ctx.counts.get(&EntityType::IPV4), 0);
    let mut ctx = RedactContext::new(None);
    assert_eq!(r.redact("server 10.0.0.1", &mut ctx).unwrap(), None);

    let config: RedactConfig = serde_json::from_value(serde_json::json!({
        "min_score": 0.5,
        "modes": {"IPV4": "allow"},
        "context_words": {"US_SSN": {"de": ["Steuernummer"]}},
        "negative_context_words": {"BANK_CARD": {"zh": ["会员卡"]}}
    }))
    .unwrap();
    assert!(RedactLayer::from_config(config, None).is_ok());
    let bad: RedactConfig = serde_json::from_value(serde_json::json!({"min_score": 2.0})).unwrap();
    assert_eq!(
        RedactLayer::from_config(bad, None).unwrap_err().field(),
        "min_score"
    );
}

#[test]
fn more_provider_tokens() {
    for v in [
        "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw1",
        "whsec_Ab3dEf5hIj7lMn9pQr1tUv3xYz5b",
        "npm_Ab3dEf5hIj7lMn9pQr1tUv3xYz5bCd7fGh9j",
        "SG.Ab3dEf5hIj7lMn9pQr1tUv.Ab3dEf5hIj7lMn9pQr1tUv3xYz5bCd7fGh9jKl1nOp3",
    ] {
        one(&format!("bot token {v} please"), EntityType::API_KEY, v);
    }
    one(
        "Authorization: Bearer q8Xr2mZt9LkP4vNw7YhB3sJd",
        EntityType::SECRET,
        "q8Xr2mZt9LkP4vNw7YhB3sJd",
    );
    none("Authorization: Bearer <token>");
}

mod arbitrary_text {
    use proptest::prelude::*;
    use tower_deepseek_redact::Detectors;

    /// Pieces that start or end entities, glued at random: every detection must be a
    /// non-overlapping, ordered range on character boundaries, and nothing may panic.
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9 ()+-]{1,20}",
            "[0-9a-zA-Z._@:/=-]{1,24}",
            Just("+86 ".to_string()),
            Just("sk-".to_string()),
            Just("AKIA".to_string()),
            Just("password: ".to_string()),
            Just("token=".to_string()),
            Just("://".to_string()),
            Just(":AA".to_string()),
            Just("密码是".to_string()),
            Just("护照".to_string()),
            Just("SSN ".to_string()),
            Just("１３８－".to_string()),
            Just("（０１０）".to_string()),
            Just("，".to_string()),
            Just("版本 ".to_string()),
            Just("-----BEGIN PRIVATE KEY-----\n".to_string()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn detections_are_ordered_ranges_on_char_boundaries(
            parts in proptest::collection::vec(piece(), 0..12)
        ) {
            let text: String = parts.concat();
            let mut last = 0;
            for d in Detectors::all().detect(&text) {
                prop_assert!(d.range.start >= last && d.range.start < d.range.end);
                prop_assert!(d.range.end <= text.len());
                prop_assert!(text.is_char_boundary(d.range.start));
                prop_assert!(text.is_char_boundary(d.range.end));
                prop_assert!((0.0..=1.0).contains(&d.score));
                last = d.range.end;
            }
        }
    }
}
