//! The shop's own vocabulary: what customers say for each FAQ topic, in Chinese and
//! English, mapped to one concept, so that `退掉`, `寄回去` and `send back` all count as
//! `@return`. This is product knowledge, not linguistics: segmentation, stemming and
//! script conversion come from their libraries (see `analyze`).
//!
//! Four lists:
//! - [`CONCEPTS`]: concept name, then its surface forms. Chinese forms are added to the
//!   segmenter's dictionary so they come out whole; English forms are words (stemmed
//!   when the analyzer is built) or, in [`EN_PHRASES`], several words.
//! - [`STOP_ZH`], [`STOP_EN`]: padding and function words that say nothing of the topic
//!   (`你好`, `请问`, `亲`, `how`, `please`).
//! - [`FOREIGN`]: words that name a shop topic no shipped entry answers (shipping fees,
//!   tax rates, points, nicknames, "why"): a question that shares a word with an entry
//!   but asks about one of these is a near miss, not a match. A word here that an entry
//!   does use counts as an ordinary word of that entry.

/// `(concept, surface forms)`; a surface may belong to several concepts (`删号` is
/// closing an account).
#[rustfmt::skip]
pub const CONCEPTS: &[(&str, &[&str])] = &[
    ("@return", &["退货", "退掉", "退回", "寄回", "寄回去", "退回去", "想退", "要退", "退了", "return", "returns", "returning"]),
    ("@exchange", &["换货", "换个", "换成", "换一个", "调换", "换码", "换大", "换小", "换一下", "exchange", "swap", "swapping"]),
    ("@ship", &["发货", "发出", "发出来", "寄出", "出库", "发走", "发", "ship", "shipping", "shipped", "dispatch", "dispatched", "send"]),
    ("@when", &["多久", "什么时候", "几天", "几号", "多长时间", "何时", "啥时候", "多少天", "多快", "when"]),
    ("@logistics", &["物流", "快递", "包裹", "单号", "快递单号", "运单号", "到哪", "到哪了", "到哪里", "到哪儿", "配送", "进度", "查件", "track", "tracking", "courier", "parcel", "shipment", "logistics"]),
    ("@address", &["地址", "收货地址", "门牌号", "收件地址", "address", "addresses"]),
    ("@change", &["修改", "改", "更改", "更换", "换", "改成", "改一下", "变更", "改掉", "change", "update", "updated", "modify", "edit", "correct"]),
    ("@wrong", &["错", "错了", "写错", "填错", "选错", "下错", "拍错", "开错", "弄错", "wrong", "mistake", "incorrect", "typo"]),
    ("@refund", &["退款", "退钱", "钱退", "refund", "refunds", "refunded"]),
    ("@arrive", &["到账", "到帐", "到卡", "到卡上", "打款", "到我卡上", "credited"]),
    ("@invoice", &["发票", "开票", "开发票", "报销", "invoice", "invoices", "fapiao", "receipt", "reimbursement"]),
    ("@invoice_detail", &["抬头", "税号"]),
    ("@reissue", &["重开", "重新开", "红冲", "重新开具", "作废", "reissue", "redo", "reissued"]),
    ("@password", &["密码", "password", "passcode"]),
    ("@forget", &["忘记", "忘了", "想不起来", "记不得", "不记得", "记不起来", "忘", "forgot", "forget", "forgotten"]),
    ("@reset", &["重置", "重设", "找回", "reset"]),
    ("@login", &["登录", "登入", "登陆", "登不上", "登不进去", "login"]),
    ("@phone", &["手机号", "手机号码", "手机", "号码", "电话号码", "换号", "phone", "mobile"]),
    ("@bind", &["绑定", "绑", "绑的", "linked", "link", "bind", "bound"]),
    ("@account", &["账户", "账号", "帐号", "帐户", "删号", "销号", "account", "accounts"]),
    ("@close", &["注销", "删号", "销户", "删除", "注销掉", "销号", "delete", "close", "deactivate", "terminate", "remove"]),
    ("@pay", &["支付", "付款", "付钱", "微信支付", "支付宝", "银联", "银联卡", "信用卡", "货到付款", "花呗", "刷卡", "分期", "微信", "刷", "pay", "payment", "payments", "paypal", "alipay", "wechat", "visa", "mastercard", "installments"]),
    ("@cancel", &["取消", "撤回", "撤销", "不想要了", "不要了", "取消掉", "cancel", "cancellation", "cancelled", "canceled"]),
    ("@order", &["订单", "单子", "order", "orders"]),
    ("@quality", &["质量问题", "质量", "瑕疵", "坏了", "坏的", "漏水", "裂痕", "破损", "损坏", "故障", "裂了", "碎了", "不能用", "用不了", "残次", "次品", "售后", "broken", "damaged", "defective", "faulty", "cracked", "crack", "leaking", "leak", "scratched", "defect", "quality", "malfunction"]),
    ("@human", &["人工", "人工客服", "真人", "客服", "转人工", "热线", "客服热线", "客服电话", "找人工", "human", "agent", "person", "representative", "hotline", "staff"]),
    ("@contact", &["联系", "contact", "speak", "talk", "call", "reach"]),
    ("@apply", &["申请", "提交", "办理", "request", "apply", "submit"]),
];

/// English phrases, matched in the lower-cased question before it is split into words
/// and replaced by the concept they name.
#[rustfmt::skip]
pub const EN_PHRASES: &[(&str, &str)] = &[
    ("send back", "@return"),
    ("send it back", "@return"),
    ("sent back", "@return"),
    ("send them back", "@return"),
    ("money back", "@refund"),
    ("log in", "@login"),
    ("sign in", "@login"),
    ("phone number", "@phone"),
    ("mobile number", "@phone"),
    ("cell number", "@phone"),
    ("tracking number", "@logistics"),
    ("where is my package", "@logistics"),
    ("where is my parcel", "@logistics"),
    ("where is my order", "@logistics"),
    ("stopped working", "@quality"),
    ("doesn't work", "@quality"),
    ("does not work", "@quality"),
    ("not working", "@quality"),
    ("can't remember", "@forget"),
    ("cannot remember", "@forget"),
    ("don't remember", "@forget"),
    ("tax id", "@invoice_detail"),
    ("tax number", "@invoice_detail"),
    ("real person", "@human"),
    ("customer service", "@human"),
    ("how long", "@when"),
    ("how soon", "@when"),
    ("what time", "@when"),
    ("by mistake", "@wrong"),
    ("cash on delivery", "@pay"),
    ("credit card", "@pay"),
    ("tax rate", "!tax_rate"),
    ("shipping fee", "!fee"),
    ("shipping cost", "!fee"),
    ("how many", "!count"),
    ("black friday", "!promo"),
];

/// Chinese padding and function words.
#[rustfmt::skip]
pub const STOP_ZH: &[&str] = &[
    "你好", "您好", "请问", "亲", "亲亲", "在吗", "在", "谢谢", "麻烦", "我", "我的", "你们", "你", "您", "的", "了",
    "吗", "呢", "啊", "吧", "呀", "哦", "嘛", "怎么", "如何", "怎样", "怎么办", "咋", "咋办", "弄", "怎么弄", "操作",
    "处理", "流程", "要", "想", "我要", "我想", "能", "可以", "能不能", "可不可以", "一下", "这个", "那个", "那件", "这件",
    "上周", "昨天", "今天", "买", "买的", "把", "是", "有", "和", "就", "都", "还", "也", "给", "帮", "帮我", "在哪",
    "哪里", "什么", "哪些", "多少", "个", "一个", "下", "该", "应该", "需要", "已经", "之前", "现在", "急", "问", "问题",
    "一直", "提示", "就是", "不是", "后", "以后", "之后", "时", "一般", "上", "中", "里", "到", "从", "被", "用", "走",
    "出", "去", "来", "过", "会", "再", "对", "又", "那", "这", "它", "他", "她", "下单", "拍", "同款", "怎么走",
    "请", "帮忙", "不", "没", "没有", "吗?", "哪", "呢?", "么", "啦", "哈", "嗯", "好", "好的", "谢", "是不是", "能否",
    "可否", "办", "怎么处理", "怎么操作", "怎么样", "一", "了吗", "填", "写", "找", "看", "查", "查询", "我们", "自己",
    "还是", "成", "东西", "商品", "宝贝", "衣服",
];

/// English function words and words too general to name a topic.
#[rustfmt::skip]
pub const STOP_EN: &[&str] = &[
    "i", "me", "my", "mine", "you", "your", "we", "our", "us", "the", "a", "an", "is", "are",
    "was", "were", "be", "been", "being", "do", "does", "did", "have", "has", "had", "can",
    "could", "would", "will", "should", "shall", "may", "might", "must", "to", "for", "of",
    "on", "in", "at", "by", "with", "it", "its", "it's", "this", "that", "these", "those",
    "and", "or", "but", "if", "how", "what", "where", "which", "who", "there", "here", "hi",
    "hello", "hey", "please", "pls", "thanks", "thank", "want", "need", "get", "got", "just",
    "so", "some", "any", "after", "before", "about", "from", "up", "out", "into", "no", "yes",
    "i'm", "im", "dont", "don't", "can't", "cant", "am", "find", "make", "know", "let", "like",
    "item", "items", "product", "products", "thing", "things", "something", "way", "ways",
    "method", "methods", "option", "options", "bought", "buy", "yesterday", "today", "day",
    "days", "ago", "week", "now", "still", "already", "also", "then", "one", "go", "see",
    "tell", "give", "help", "possible", "anyone", "someone", "all", "again", "new", "old",
    "very", "really", "guys", "ok", "okay", "i've", "i'd", "it", "them", "they", "via", "do",
    "what's", "where's", "isn't", "won't", "doesn't", "didn't", "happen", "happens", "process",
    "steps", "accept", "take", "use", "using", "place", "placed", "put", "able", "should",
    "inside", "just", "arrived", "came", "come", "number",
];

/// Topics the shipped entries do not answer; see the module's notes.
#[rustfmt::skip]
pub const FOREIGN: &[&str] = &[
    "运费", "邮费", "税率", "税点", "积分", "优惠", "优惠券", "活动", "优惠活动", "折扣", "会员", "尺码", "昵称", "头像", "邮箱",
    "注册", "恢复", "保存", "仓", "仓库", "发货地", "库存", "价格", "多少钱", "正品", "国行", "保修", "为什么", "为啥", "怎么会",
    "几个", "多少个", "最多", "自动", "系统", "双十一", "赠品", "包邮", "拆单", "合并", "预约", "加急", "运费险", "保价", "降价",
    "价保", "发票税率", "开店", "入驻", "门店", "实体店", "客服工作时间", "评价", "差评", "好评", "restore", "restored",
    "recover", "email", "nickname", "username", "store", "shop", "deal", "deals", "discount",
    "discounts", "coupon", "coupons", "promo", "promotion", "sale", "sales", "points", "price",
    "prices", "cost", "fee", "fees", "why", "robot", "bot", "warranty", "register",
    "registration", "stock", "warehouse", "review", "membership", "member", "gift", "wrap",
    "physical", "国外", "海外", "国际", "境外", "abroad", "international", "overseas", "worldwide",
    "country", "countries",
];
