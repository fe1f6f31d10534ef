"""Word lists from which tshjobs.erp.seed builds sample customers and products.

The names are invented. They mix Arabic script, Latin letters with diacritics,
apostrophes, ampersands and commas, because names like these break naive
templates, CSV files and email headers.
"""

# The first customers of every seeded ERP, so that even a tiny seed has each
# kind of name. None as email means the customer has no email address.
SHOWCASE_CUSTOMERS = [
    ("شركة التقنية الحديثة", "info.altaqnia@example.com"),
    ("Müller, Hans", "hans.mueller@example.org"),
    ("O'Brien & Sons Trading", "accounts.obrien@example.net"),
    ("José Peña", None),
    ("Zoë Ångström", "zoe.angstrom@example.com"),
    ("مؤسسة النور للتجارة العامة", "sales.alnoor@example.org"),
]

ARABIC_COMPANY_PREFIXES = ["شركة", "مؤسسة", "مجموعة", "مكتب", "معرض"]
ARABIC_COMPANY_WORDS = [
    "التقنية الحديثة",
    "النور للتجارة",
    "الرافدين للمقاولات",
    "دجلة للحاسبات",
    "الفرات للإلكترونيات",
    "بغداد للتجهيزات",
    "البصرة للشحن",
    "الأمل للتوريدات",
    "الشرق الأوسط للأنظمة",
    "النخيل للطباعة",
    "السلام للخدمات",
    "الزوراء للاتصالات",
]
ARABIC_GIVEN_NAMES = [
    "محمد",
    "أحمد",
    "علي",
    "حسين",
    "فاطمة",
    "زينب",
    "مريم",
    "عمر",
    "سارة",
    "يوسف",
    "نور",
    "حيدر",
]
ARABIC_FAMILY_NAMES = [
    "عبد الله",
    "الجبوري",
    "التميمي",
    "الموسوي",
    "العبيدي",
    "الربيعي",
    "الحسيني",
    "الدليمي",
    "الساعدي",
    "الكعبي",
]

LATIN_GIVEN_NAMES = [
    "Hans",
    "José",
    "Zoë",
    "François",
    "Łukasz",
    "Søren",
    "Anaïs",
    "Björn",
    "Chloé",
    "Jürgen",
    "Núria",
    "Siobhán",
    "Mary",
    "John",
    "Ana",
    "Émile",
]
LATIN_FAMILY_NAMES = [
    "Müller",
    "Peña",
    "O'Brien",
    "D'Angelo",
    "Lefèvre",
    "Wróbel",
    "Ångström",
    "Østergaard",
    "Smith",
    "García",
    "O'Connor",
    "Nguyễn",
    "Dubois",
    "Schröder",
    "MacLeod",
    "Çelik",
]
LATIN_COMPANY_FORMS = [
    "{family} & Sons",
    "{family} & Partners",
    "{family} GmbH",
    "{family} Trading Co.",
    "{family}, {other} & Co.",
    "{family} S.A.",
    "{family} Import-Export",
]

PRODUCT_BASES = [
    ("كابل شبكة Cat6", ["1 م", "3 م", "5 م", "10 م"]),
    ("Network switch", ["8-port", "16-port", "24-port", "48-port"]),
    ("Router", ["AX1800", "AX3000", "AX5400"]),
    ("ورق طباعة A4", ["500 ورقة", "كرتون 5 رزم"]),
    ("Toner cartridge", ["black", "cyan", "magenta", "yellow"]),
    ("Laptop bag", ['14"', '15.6"', '17"']),
    ("شاحن لابتوب", ["65 واط", "90 واط", "USB-C 100 واط"]),
    ("UPS", ["650 VA", "1000 VA", "1500 VA", "3000 VA"]),
    ("Keyboard & mouse set", ["wired", "wireless", "لوحة عربية/English"]),
    ("Monitor", ['22"', '24"', '27"', '32" 4K']),
    ("قرص SSD", ["256 GB", "512 GB", "1 TB", "2 TB"]),
    ("Cable ties", ["100 pcs", "500 pcs"]),
    ("Rack cabinet", ["6U", "12U", "42U"]),
    ("Café-grade label printer", ["58 mm", "80 mm"]),
]

# Price bands in cents with their weights: many cheap items, few expensive ones.
PRICE_BANDS_CENTS = [
    ((10, 999), 30),
    ((1000, 9999), 40),
    ((10000, 49999), 22),
    ((50000, 250000), 8),
]
