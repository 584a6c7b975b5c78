"""A deterministic sample corpus for `router select`: real prose mixed with corrupted text
(shuffled words, random characters), web boilerplate (cookie banners, navigation menus,
repeated lines) and a few malformed lines (bad JSON, a missing text field, non-UTF-8 bytes,
empty text). Every good record carries `kind` (the ground truth) and `site` (for --stratify).

    python bench/make_sample_corpus.py --seed 0 --out examples/sample_corpus.jsonl
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

PROSE = [
    "The children walked to school in the morning, kicking the first fallen leaves along the "
    "path. Their teacher was waiting at the gate with a basket of apples from her garden.",
    "Rain fell steadily through the night, and by dawn the river had risen to the edge of the "
    "old stone bridge. The farmers moved their sheep to higher ground before breakfast.",
    "My grandmother kept a small notebook in the kitchen drawer. In it she wrote every recipe "
    "she had ever learned, along with the name of the person who taught it to her.",
    "The library opens at nine on weekdays and at ten on Saturdays. Visitors may borrow up to "
    "six books at a time and keep them for three weeks.",
    "When the train stopped in the middle of the valley, nobody said a word. After a few "
    "minutes the conductor walked through the carriage and explained that a tree had fallen "
    "across the line.",
    "Bees communicate the location of flowers by dancing. The angle of the dance tells the "
    "other bees the direction of the food, and its length tells them how far away it is.",
    "He had never seen the sea before. He stood on the sand for a long time, listening to the "
    "waves and watching the light change on the water.",
    "To make a simple bread, mix flour, water, salt and a little yeast. Let the dough rise for "
    "a few hours, shape it gently, and bake it in a hot oven until the crust is brown.",
    "The museum's new exhibition tells the story of the city's harbour, from the first fishing "
    "boats to the container ships that arrive there today.",
    "She opened the window and the smell of fresh bread drifted up from the bakery across the "
    "street. It was going to be a good day, she decided.",
    "Most plants need sunlight, water and nutrients from the soil to grow. Leaves use the energy "
    "of sunlight to turn water and carbon dioxide into sugar.",
    "The meeting was moved to Thursday afternoon because several members of the team were "
    "travelling. Please bring the budget figures and your notes from last month.",
    "In the winter the village was quiet. Snow covered the roofs, smoke rose from the chimneys, "
    "and the only sound was the bell of the church at noon.",
    "A good map shows not only roads and rivers but also hills, forests and the small paths "
    "that walkers use. With it, you can plan a day in the mountains safely.",
    "The old man fed the pigeons every afternoon in the park. He knew many of them by sight and "
    "had given each one a name.",
    "Water boils at one hundred degrees Celsius at sea level. On a high mountain it boils at a "
    "lower temperature, so cooking an egg takes longer there.",
    "After dinner the family sat on the porch and talked about the summer. The air was warm, "
    "and somewhere in the field a cricket began to sing.",
    "The company announced that it would open a new factory next year, creating about two "
    "hundred jobs in the town.",
    "Reading aloud to young children helps them learn new words and enjoy stories. Even a few "
    "minutes every evening can make a difference.",
    "The ship left the harbour at sunrise. By noon the coast had disappeared behind them, and "
    "there was nothing to see but the blue water in every direction.",
    "Our neighbours have a large dog that barks at the postman every morning. The postman has "
    "started to bring it a biscuit, and now they are good friends.",
    "The cathedral took more than a hundred years to build. Several generations of workers "
    "spent their whole lives on it, and few of them saw it finished.",
    "If you feel tired in the afternoon, a short walk outside is often better than another cup "
    "of coffee. Fresh air and daylight help the body stay awake.",
    "The market was full of colour: red tomatoes, yellow lemons, green beans and baskets of "
    "dark purple plums. Traders called out their prices to the passing crowd.",
    "During the storm the lights went out, so we lit candles and played cards at the kitchen "
    "table until the power came back.",
    "The history of writing began with simple marks on clay. Over thousands of years these "
    "marks became the alphabets that people use today.",
    "My brother learned to ride a bicycle when he was six. He fell many times, but he always "
    "got up and tried again.",
    "The hotel is a short walk from the station. Breakfast is served from seven until ten, and "
    "guests can leave their bags at the front desk after checking out.",
    "Owls hunt at night. Their large eyes gather what little light there is, and their soft "
    "feathers let them fly almost without a sound.",
    "The garden was small, but every corner of it was full of flowers. In the summer it was "
    "visited by butterflies from all over the neighbourhood.",
    "Doctors recommend that adults sleep between seven and nine hours each night. Too little "
    "sleep can affect mood, memory and health.",
    "The two friends had not seen each other for ten years. They talked for hours, laughing "
    "about the things they had done when they were young.",
    "The mountain road is closed in winter because of snow. It usually opens again in late "
    "spring, when the snow has melted.",
    "Every year the town holds a festival in the main square, with music, dancing and long "
    "tables of food that everyone shares.",
    "The scientist repeated the experiment three times to be sure of the result. Each time the "
    "water turned blue after exactly two minutes.",
    "He wrote a letter to his sister every week, even though she lived only a few streets away. "
    "She kept every one of them in a box under her bed.",
    "Autumn is the best season for walking in the forest. The air is cool, the paths are dry, "
    "and the trees are red and gold.",
    "The bus was late again, so she decided to walk. On the way she found a small bookshop she "
    "had never noticed before.",
    "Cats sleep for most of the day and become more active in the evening. Many owners find "
    "that their cat wants to play just as they are going to bed.",
    "The teacher asked the class to write a short story about an adventure. Some wrote about "
    "pirates, some about space, and one boy wrote about his grandfather's farm.",
    "Fresh vegetables keep longer in a cool, dark place. Potatoes and onions should be stored "
    "apart, because together they spoil more quickly.",
    "On clear nights, far from the lights of the city, you can see thousands of stars and the "
    "pale band of the Milky Way across the sky.",
    "The small boat rocked gently as the fisherman pulled in his net. It was heavy, and he "
    "smiled, thinking of the market the next morning.",
    "Learning a new language takes time and patience. Listening every day, even for a few "
    "minutes, helps the sounds become familiar.",
    "The city council voted to plant five hundred trees along the main streets, to give shade "
    "in summer and to make the air cleaner.",
]

BOILERPLATE = [
    "We use cookies to improve your experience. By continuing to browse this site you agree to "
    "our use of cookies. Accept all cookies. Reject all. Cookie settings. Privacy policy.",
    "Home | About us | Products | Services | Blog | Contact | Login | Register | Cart (0) | "
    "Search | FAQ | Terms | Privacy | Sitemap",
    "Share on Facebook Share on Twitter Share on LinkedIn Share by email Print this page",
    "Copyright 2024 All rights reserved. Terms of use. Privacy policy. Cookie policy. "
    "Accessibility. Sitemap. Contact us.",
    "Click here to subscribe to our newsletter! Click here to subscribe to our newsletter! "
    "Click here to subscribe to our newsletter! Click here to subscribe to our newsletter!",
    "Menu Menu Menu Home Home News News Sport Sport Weather Weather More More Menu Home",
    "Skip to main content. Skip to navigation. Skip to footer. Toggle navigation. Open menu. "
    "Close menu.",
    "Page 1 of 12 | Next | Previous | First | Last | Page 2 | Page 3 | Page 4 | Page 5",
    "Loading... Loading... Loading... Please wait. Loading... Loading... Loading...",
    "Tags: news, world, local, sport, weather, business, tech, health, travel, style, video",
    "Sign in | Create account | Forgot password? | Remember me | Sign in with Google | Sign in "
    "with Apple",
    "Add to cart. Add to wishlist. Compare. Size guide. Free shipping on orders over $50. "
    "Add to cart. Add to wishlist.",
]

SITES = ("news.example", "forum.example", "shop.example")


def _shuffled(rng: random.Random, text: str) -> str:
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


def _random_chars(rng: random.Random, n: int) -> str:
    alphabet = string.ascii_letters + string.digits + "#%&*+/<=>@[]^{}~"
    words = ["".join(rng.choice(alphabet) for _ in range(rng.randint(2, 9)))
             for _ in range(n)]
    return " ".join(words)


def make_records(seed: int = 0, *, n_prose: int = 40, n_shuffled: int = 12, n_random: int = 10,
                 n_boilerplate: int = 14) -> list[dict[str, str]]:
    """Good records in a seeded random order. Example: make_records(0)[0]['kind'] -> 'prose'|..."""
    rng = random.Random(seed)
    prose = rng.sample(PROSE, min(n_prose, len(PROSE)))
    recs: list[dict[str, str]] = [{"text": t, "kind": "prose"} for t in prose]
    recs += [{"text": _shuffled(rng, rng.choice(PROSE)), "kind": "shuffled"}
             for _ in range(n_shuffled)]
    recs += [{"text": _random_chars(rng, rng.randint(12, 30)), "kind": "random"}
             for _ in range(n_random)]
    recs += [{"text": BOILERPLATE[i % len(BOILERPLATE)], "kind": "boilerplate"}
             for i in range(n_boilerplate)]
    rng.shuffle(recs)
    out = []
    for i, r in enumerate(recs):
        out.append({"id": f"doc-{i:04d}", "site": rng.choice(SITES), **r})
    return out


MALFORMED: list[bytes] = [
    b'{"id": "bad-json", "text": "this line is cut off',
    b'{"id": "no-text", "body": "the text field is missing"}',
    b'{"id": "latin1", "text": "caf\xe9 cr\xe8me"}',
    b'{"id": "empty", "text": ""}',
]


def write_corpus(path: Path | str, seed: int = 0, **kw: int) -> dict[str, int]:
    """Write the JSONL corpus with the malformed lines spread through it; returns counts."""
    rng = random.Random(seed + 1)
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in make_records(seed, **kw)]
    for bad in MALFORMED:
        lines.insert(rng.randint(1, len(lines) - 1), bad)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"\n".join(lines) + b"\n")
    return {"records": len(lines), "malformed": len(MALFORMED)}
