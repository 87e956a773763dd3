//! Micro-benchmarks of FAQ matching, in process: one question matched against the
//! shipped canned file (Chinese paraphrase, English paraphrase, a near miss), and
//! against a generated file of 5,000 entries. Besides criterion's means, prints the p50
//! and p99 of 20,000 single timed matches per case, the figures the targets are in
//! (p99 <= 20 us shipped, <= 200 us at 5,000 entries).
//!
//! Run: `cargo bench --bench faq -- --warm-up-time 1 --measurement-time 3`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};

use resilient_qa::faq::lang::ZH;
use resilient_qa::faq::{Entry, Faq, Variant};

const QUESTIONS: &[(&str, &str)] = &[
    (
        "zh_paraphrase",
        "你好,我想把上周买的那件卫衣退掉,要怎么操作?",
    ),
    (
        "en_paraphrase",
        "i placed an order by mistake, can i cancel it?",
    ),
    (
        "zh_near_miss",
        "不是质量问题,就是不喜欢,退货的运费要我自己出吗?",
    ),
    ("zh_exact", "如何退货?"),
];

fn shipped() -> Faq {
    match Faq::load(Path::new("config/canned_answers.toml"), ZH) {
        Ok(f) => f,
        Err(e) => panic!("{e}"),
    }
}

/// 5,000 entries whose questions combine shop words, so that postings are long and
/// many entries share terms with the question, as in a large real FAQ.
fn generated(n: usize) -> Faq {
    const ACTIONS: &[&str] = &[
        "如何退货",
        "怎么换货",
        "多久发货",
        "查询物流",
        "修改地址",
        "申请退款",
        "开发票",
        "重开发票",
        "忘记密码",
        "修改手机号",
        "注销账户",
        "支付方式",
        "取消订单",
        "质量问题",
        "联系客服",
        "使用优惠券",
        "积分兑换",
        "预约安装",
        "保价申请",
        "开通会员",
    ];
    const THINGS: &[&str] = &[
        "手机",
        "电脑",
        "冰箱",
        "洗衣机",
        "空调",
        "电视",
        "耳机",
        "相机",
        "平板",
        "手表",
        "卫衣",
        "外套",
        "鞋子",
        "裤子",
        "裙子",
        "帽子",
        "包包",
        "口红",
        "面霜",
        "香水",
        "沙发",
        "床垫",
        "桌子",
        "椅子",
        "台灯",
        "窗帘",
        "地毯",
        "餐具",
        "锅具",
        "水杯",
        "奶粉",
        "尿布",
        "玩具",
        "图书",
        "文具",
        "零食",
        "茶叶",
        "咖啡",
        "红酒",
        "水果",
        "轮胎",
        "机油",
        "自行车",
        "跑步机",
        "哑铃",
        "瑜伽垫",
        "帐篷",
        "鱼竿",
        "猫粮",
        "狗粮",
    ];
    const PLACES: &[&str] = &["北京", "上海", "广州", "深圳", "成都"];
    let mut entries = Vec::with_capacity(n);
    'outer: for a in ACTIONS {
        for t in THINGS {
            for p in PLACES {
                if entries.len() == n {
                    break 'outer;
                }
                let question = format!("{p}的{t}{a}?");
                let variant = Variant {
                    question: Arc::from(question.as_str()),
                    answer: Arc::from(format!("{question}的答案")),
                    aliases: vec![format!("{t}{a}{p}"), format!("{a}{t}")],
                };
                entries.push(Entry {
                    variants: BTreeMap::from([(ZH, variant)]),
                });
            }
        }
    }
    // 20 x 50 x 5 = 5,000.
    Faq::index(entries, ZH)
}

/// p50 and p99 of `runs` single timed matches, in microseconds.
fn percentiles(faq: &Faq, q: &str, runs: usize) -> (f64, f64) {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            black_box(faq.best(black_box(q)));
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let at = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    (at(0.5), at(0.99))
}

fn bench_faq(c: &mut Criterion) {
    let shipped = shipped();
    let large = generated(5_000);
    assert_eq!(large.len(), 5_000);
    // Only under `cargo bench` (which passes --bench): test runs and listings (cargo
    // test, nextest) run each benchmark once, unoptimized, and must print nothing else.
    let measuring = std::env::args().any(|a| a == "--bench");
    for (name, faq) in [("shipped_16", &shipped), ("generated_5000", &large)] {
        for (case, q) in QUESTIONS.iter().filter(|_| measuring) {
            // Warm up, then the percentiles criterion does not give.
            percentiles(faq, q, 2_000);
            let (p50, p99) = percentiles(faq, q, 20_000);
            println!(
                "faq_match/{name}/{case}: p50 {p50:.1} us, p99 {p99:.1} us (20,000 timed matches)"
            );
        }
    }
    let mut g = c.benchmark_group("faq_match");
    for (name, faq) in [("shipped_16", &shipped), ("generated_5000", &large)] {
        for (case, q) in QUESTIONS {
            g.bench_function(format!("{name}/{case}"), |b| {
                b.iter(|| faq.best(black_box(q)))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_faq);
criterion_main!(benches);
