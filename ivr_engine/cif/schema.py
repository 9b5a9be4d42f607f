"""CIF tables. Append a `Migration` to change them; never edit a released one."""

from __future__ import annotations

from ivr_engine.cif.sqlite import Migration

COMPONENT = "cif"

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "customers, phones, cards, accounts, bills, risk flags, products, call counts, requests",
        (
            """CREATE TABLE customers (
                id INTEGER PRIMARY KEY,
                cif_no TEXT NOT NULL UNIQUE,
                surname TEXT NOT NULL,
                surname_zh TEXT NOT NULL DEFAULT '',
                given_name TEXT NOT NULL DEFAULT '',
                title TEXT NOT NULL CHECK (title IN ('mr', 'ms')),
                tier TEXT NOT NULL CHECK (tier IN ('vip', 'group', 'standard')),
                preferred_language TEXT CHECK (preferred_language IN ('cmn', 'yue', 'en')),
                home_province TEXT,
                home_city TEXT,
                pin_hash TEXT,
                pin_failures INTEGER NOT NULL DEFAULT 0,
                locked INTEGER NOT NULL DEFAULT 0 CHECK (locked IN (0, 1)),
                created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
            )""",
            # Numbers are stored in E.164 (`+8613926000001`): one key whatever shape the PBX sends.
            """CREATE TABLE phones (
                number TEXT PRIMARY KEY,
                customer_id INTEGER NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
                bound INTEGER NOT NULL DEFAULT 0 CHECK (bound IN (0, 1)),
                verified INTEGER NOT NULL DEFAULT 0 CHECK (verified IN (0, 1))
            ) WITHOUT ROWID""",
            "CREATE INDEX phones_customer ON phones(customer_id)",
            # `pan_hash` is HMAC-SHA256(key, full number): lets a keyed number find its card
            # without the number being stored. The key lives outside the database.
            """CREATE TABLE cards (
                id INTEGER PRIMARY KEY,
                customer_id INTEGER NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
                kind TEXT NOT NULL CHECK (kind IN ('credit', 'debit')),
                masked TEXT NOT NULL,
                last4 TEXT NOT NULL CHECK (length(last4) = 4),
                pan_hash TEXT NOT NULL UNIQUE,
                status TEXT NOT NULL
                    CHECK (status IN ('active', 'blocked', 'inactive', 'cancelled')),
                credit_limit_cents INTEGER NOT NULL DEFAULT 0 CHECK (credit_limit_cents >= 0),
                updated_at TEXT
            )""",
            "CREATE INDEX cards_customer ON cards(customer_id)",
            """CREATE TABLE accounts (
                id INTEGER PRIMARY KEY,
                customer_id INTEGER NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
                kind TEXT NOT NULL CHECK (kind IN ('current', 'savings')),
                masked TEXT NOT NULL,
                currency TEXT NOT NULL DEFAULT 'CNY',
                balance_cents INTEGER NOT NULL DEFAULT 0,
                eod_balance_cents INTEGER NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX accounts_customer ON accounts(customer_id)",
            """CREATE TABLE bills (
                id INTEGER PRIMARY KEY,
                card_id INTEGER NOT NULL REFERENCES cards(id) ON DELETE CASCADE,
                statement_date TEXT NOT NULL,
                statement_cents INTEGER NOT NULL CHECK (statement_cents >= 0),
                minimum_cents INTEGER NOT NULL CHECK (minimum_cents >= 0),
                due_date TEXT NOT NULL,
                paid INTEGER NOT NULL DEFAULT 0 CHECK (paid IN (0, 1))
            )""",
            "CREATE INDEX bills_card_unpaid ON bills(card_id, paid, due_date)",
            """CREATE TABLE risk_flags (
                id INTEGER PRIMARY KEY,
                customer_id INTEGER NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
                code TEXT NOT NULL,
                text TEXT NOT NULL,
                active INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
                raised_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
            )""",
            "CREATE INDEX risk_flags_customer ON risk_flags(customer_id, active)",
            """CREATE TABLE products (
                customer_id INTEGER NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
                code TEXT NOT NULL,
                name TEXT NOT NULL,
                PRIMARY KEY (customer_id, code)
            ) WITHOUT ROWID""",
            """CREATE TABLE call_counts (
                customer_id INTEGER NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
                day TEXT NOT NULL,
                count INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (customer_id, day)
            ) WITHOUT ROWID""",
            """CREATE TABLE service_requests (
                id INTEGER PRIMARY KEY,
                customer_id INTEGER NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
                card_id INTEGER NOT NULL REFERENCES cards(id) ON DELETE CASCADE,
                kind TEXT NOT NULL CHECK (kind IN ('limit_raise', 'instalment')),
                amount_cents INTEGER,
                months INTEGER,
                status TEXT NOT NULL DEFAULT 'pending',
                created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
            )""",
            "CREATE INDEX service_requests_customer ON service_requests(customer_id)",
        ),
    ),
    Migration(
        2,
        "payments: transfers and wealth-product purchases made on the hotline",
        (
            """CREATE TABLE payments (
                id INTEGER PRIMARY KEY,
                customer_id INTEGER NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
                account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
                kind TEXT NOT NULL CHECK (kind IN ('transfer', 'wealth_purchase')),
                amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
                counterparty_last4 TEXT NOT NULL DEFAULT '',
                created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
            )""",
            "CREATE INDEX payments_customer ON payments(customer_id)",
        ),
    ),
)
