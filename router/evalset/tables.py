"""Small fact tables the built-in evaluation set draws from (written for this repo, no downloads).

Each answer is a tuple of accepted spellings; the first is the canonical one.
"""

from __future__ import annotations

# country -> accepted capital spellings
CAPITALS: dict[str, tuple[str, ...]] = {
    "France": ("Paris",),
    "Japan": ("Tokyo",),
    "Italy": ("Rome", "Roma"),
    "Germany": ("Berlin",),
    "Spain": ("Madrid",),
    "Portugal": ("Lisbon", "Lisboa"),
    "the United Kingdom": ("London",),
    "Russia": ("Moscow",),
    "China": ("Beijing", "Peking"),
    "Egypt": ("Cairo",),
    "Greece": ("Athens",),
    "Ireland": ("Dublin",),
    "Norway": ("Oslo",),
    "Sweden": ("Stockholm",),
    "Finland": ("Helsinki",),
    "Denmark": ("Copenhagen",),
    "Poland": ("Warsaw",),
    "Austria": ("Vienna", "Wien"),
    "Hungary": ("Budapest",),
    "Kenya": ("Nairobi",),
    "Argentina": ("Buenos Aires",),
    "Peru": ("Lima",),
    "Mexico": ("Mexico City",),
    "Canada": ("Ottawa",),
    "Australia": ("Canberra",),
    "Thailand": ("Bangkok",),
    "South Korea": ("Seoul",),
    "Cuba": ("Havana",),
    "Turkey": ("Ankara",),
    "Iran": ("Tehran", "Teheran"),
    "Chile": ("Santiago",),
    "Colombia": ("Bogota", "Bogotá"),
}

# country -> accepted currency names
CURRENCIES: dict[str, tuple[str, ...]] = {
    "Japan": ("yen",),
    "the United Kingdom": ("pound", "sterling"),
    "the United States": ("dollar", "USD"),
    "India": ("rupee",),
    "Switzerland": ("franc",),
    "Mexico": ("peso",),
    "China": ("yuan", "renminbi"),
    "Russia": ("ruble", "rouble"),
    "Germany": ("euro",),
    "South Korea": ("won",),
    "Brazil": ("real", "reais"),
    "Sweden": ("krona", "kronor"),
}

# country -> continent
CONTINENTS: dict[str, tuple[str, ...]] = {
    "Kenya": ("Africa",),
    "Egypt": ("Africa",),
    "Nigeria": ("Africa",),
    "Brazil": ("South America",),
    "Peru": ("South America",),
    "Argentina": ("South America",),
    "Japan": ("Asia",),
    "India": ("Asia",),
    "Vietnam": ("Asia",),
    "France": ("Europe",),
    "Norway": ("Europe",),
    "Poland": ("Europe",),
    "Canada": ("North America",),
    "Mexico": ("North America",),
}

WORDS: tuple[str, ...] = (
    "cat", "dog", "sun", "tree", "book", "fish", "lamp", "rain", "star", "milk",
    "apple", "house", "river", "green", "table", "music", "bread", "chair", "cloud", "plant",
    "garden", "window", "orange", "silver", "pencil", "rabbit",
)

# (question template, factor, from unit, to unit): value * factor
UNITS: tuple[tuple[str, int], ...] = (
    ("How many meters are in {v} kilometers?", 1000),
    ("How many grams are in {v} kilograms?", 1000),
    ("How many minutes are in {v} hours?", 60),
    ("How many seconds are in {v} minutes?", 60),
    ("How many centimeters are in {v} meters?", 100),
    ("How many days are in {v} weeks?", 7),
    ("How many eggs are in {v} dozen eggs?", 12),
    ("How many hours are in {v} days?", 24),
    ("How many millimeters are in {v} centimeters?", 10),
)

# intent -> (phrasings, canonical answer, keyword groups: every group needs one hit)
SUPPORT: dict[str, tuple[tuple[str, ...], str, tuple[tuple[str, ...], ...]]] = {
    "password_reset": (
        ("How do I reset my password?", "I forgot my password. What should I do?",
         "I can't log in because I don't remember my password. How can I reset it?"),
        "Click 'Forgot password' on the sign-in page and follow the reset link we email you.",
        (("password",), ("forgot", "reset link", "email", "link", "settings", "sign-in",
                         "sign in", "login page", "log in page")),
    ),
    "refund": (
        ("How do I get a refund for my order?", "I want my money back for an item. What do I do?",
         "Can I return a product and get a refund?"),
        "Request a refund from your order history within 30 days; the money goes back to "
        "your original payment method.",
        (("refund", "return", "money back"),
         ("order", "days", "receipt", "original payment", "customer service", "support",
          "contact", "form")),
    ),
    "cancel_subscription": (
        ("How do I cancel my subscription?", "I want to stop my monthly plan. How?",
         "How can I end my membership?"),
        "Go to Account settings, then Subscription, and choose Cancel subscription.",
        (("cancel", "unsubscribe", "end", "stop", "terminate"),
         ("settings", "account", "subscription", "membership", "plan", "contact", "support")),
    ),
    "track_order": (
        ("Where is my package?", "How can I track my order?",
         "My order has not arrived yet. How do I check where it is?"),
        "Open your order history and click Track package to see the carrier's tracking page.",
        (("track", "tracking", "carrier", "shipping", "delivery", "order status"),),
    ),
    "change_address": (
        ("How do I change my shipping address?", "I moved. How can I update my address?",
         "Can I change the delivery address on my account?"),
        "Update your address under Account settings, Addresses; open orders can be changed "
        "until they ship.",
        (("address",), ("settings", "account", "profile", "update", "edit", "change")),
    ),
    "delete_account": (
        ("How do I delete my account?", "I want to close my account permanently. How?",
         "Please tell me how to remove my account and my data."),
        "Go to Account settings, Privacy, and choose Delete account; it is removed after "
        "30 days.",
        (("delete", "close", "remove", "deactivate"), ("account", "settings", "privacy")),
    ),
    "payment_method": (
        ("How do I update my credit card?", "How can I change my payment method?",
         "My card expired. How do I add a new card?"),
        "Add or replace a card under Account settings, Payment methods.",
        (("card", "payment"), ("settings", "account", "billing", "wallet", "add", "update",
                               "change")),
    ),
}
