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
    assert!(
        Detectors::builder()
            .custom("bad name", "x")
            .build()
            .is_err()
    );
    assert!(Detectors::builder().custom("X", "(").build().is_err());
    assert!(Detectors::builder().custom("EMAIL", "x").build().is_err());
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
