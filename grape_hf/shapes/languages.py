"""Captions of shapes scenes in English (the canonical style) and in German, French, Spanish and Chinese.

The renderings are grammatical, not word for word: German adjectives take the strong endings after `ein`/`eine`
(`ein kleiner roter Kreis`, `eine kleine rote Raute`, `ein kleines rotes Quadrat`); French puts the size before
the noun and the colour after it, both agreeing in gender (`une petite croix verte`); Spanish puts both after the
noun (`un círculo rojo pequeño`, `una cruz verde pequeña`); Chinese leads with the position
(`左边有一个红色的小圆形`). Every word comes from the tables below.
"""

from __future__ import annotations

from .vocabulary import COLOURS, SHAPES, ObjectLike, SceneLike

# Each language: nouns with their gender, adjectives by gender, the article by gender, position phrases, the order
# of the words in an object phrase, and how object phrases are joined ("a, b and c").
LANGUAGE_TABLES: dict[str, dict] = {
    "en": {
        "name": "English",
        "nouns": {s: (s, "-") for s in SHAPES},
        "articles": {"-": "a"},
        "colours": {c: {"-": c} for c in COLOURS},
        "sizes": {"small": {"-": "small"}, "large": {"-": "large"}},
        "positions": {
            "top": "at the top",
            "left": "on the left",
            "middle": "in the middle",
            "right": "on the right",
            "bottom": "at the bottom",
        },
        "object": "{article} {size} {colour} {noun} {position}",
        "separator": ", ",
        "last_separator": " and ",
    },
    "de": {
        "name": "German",
        "nouns": {
            "circle": ("Kreis", "m"),
            "square": ("Quadrat", "n"),
            "triangle": ("Dreieck", "n"),
            "cross": ("Kreuz", "n"),
            "diamond": ("Raute", "f"),
        },
        "articles": {"m": "ein", "f": "eine", "n": "ein"},
        # Strong adjective endings after the indefinite article, nominative: -er, -e, -es.
        "colours": {
            "red": {"m": "roter", "f": "rote", "n": "rotes"},
            "green": {"m": "grüner", "f": "grüne", "n": "grünes"},
            "blue": {"m": "blauer", "f": "blaue", "n": "blaues"},
            "yellow": {"m": "gelber", "f": "gelbe", "n": "gelbes"},
            "purple": {"m": "violetter", "f": "violette", "n": "violettes"},
            "orange": {"m": "orangefarbener", "f": "orangefarbene", "n": "orangefarbenes"},
        },
        "sizes": {
            "small": {"m": "kleiner", "f": "kleine", "n": "kleines"},
            "large": {"m": "großer", "f": "große", "n": "großes"},
        },
        "positions": {"top": "oben", "left": "links", "middle": "in der Mitte", "right": "rechts", "bottom": "unten"},
        "object": "{article} {size} {colour} {noun} {position}",
        "separator": ", ",
        "last_separator": " und ",
    },
    "fr": {
        "name": "French",
        "nouns": {
            "circle": ("cercle", "m"),
            "square": ("carré", "m"),
            "triangle": ("triangle", "m"),
            "cross": ("croix", "f"),
            "diamond": ("losange", "m"),
        },
        "articles": {"m": "un", "f": "une"},
        "colours": {
            "red": {"m": "rouge", "f": "rouge"},
            "green": {"m": "vert", "f": "verte"},
            "blue": {"m": "bleu", "f": "bleue"},
            "yellow": {"m": "jaune", "f": "jaune"},
            "purple": {"m": "violet", "f": "violette"},
            "orange": {"m": "orange", "f": "orange"},  # invariable: a colour named after a fruit
        },
        "sizes": {"small": {"m": "petit", "f": "petite"}, "large": {"m": "grand", "f": "grande"}},
        "positions": {
            "top": "en haut",
            "left": "à gauche",
            "middle": "au milieu",
            "right": "à droite",
            "bottom": "en bas",
        },
        # petit/grand precede the noun; colours follow it.
        "object": "{article} {size} {noun} {colour} {position}",
        "separator": ", ",
        "last_separator": " et ",
    },
    "es": {
        "name": "Spanish",
        "nouns": {
            "circle": ("círculo", "m"),
            "square": ("cuadrado", "m"),
            "triangle": ("triángulo", "m"),
            "cross": ("cruz", "f"),
            "diamond": ("rombo", "m"),
        },
        "articles": {"m": "un", "f": "una"},
        "colours": {
            "red": {"m": "rojo", "f": "roja"},
            "green": {"m": "verde", "f": "verde"},
            "blue": {"m": "azul", "f": "azul"},
            "yellow": {"m": "amarillo", "f": "amarilla"},
            "purple": {"m": "morado", "f": "morada"},
            "orange": {"m": "naranja", "f": "naranja"},  # invariable
        },
        "sizes": {"small": {"m": "pequeño", "f": "pequeña"}, "large": {"m": "grande", "f": "grande"}},
        "positions": {
            "top": "arriba",
            "left": "a la izquierda",
            "middle": "en el centro",
            "right": "a la derecha",
            "bottom": "abajo",
        },
        "object": "{article} {noun} {colour} {size} {position}",
        "separator": ", ",
        "last_separator": " y ",
    },
    "zh": {
        "name": "Chinese",
        "nouns": {
            "circle": ("圆形", "-"),
            "square": ("正方形", "-"),
            "triangle": ("三角形", "-"),
            "cross": ("十字形", "-"),
            "diamond": ("菱形", "-"),
        },
        "articles": {"-": "一个"},
        "colours": {
            c: {"-": z}
            for c, z in {
                "red": "红色",
                "green": "绿色",
                "blue": "蓝色",
                "yellow": "黄色",
                "purple": "紫色",
                "orange": "橙色",
            }.items()
        },
        "sizes": {"small": {"-": "小"}, "large": {"-": "大"}},
        "positions": {"top": "上面", "left": "左边", "middle": "中间", "right": "右边", "bottom": "下面"},
        # "On the left there is a red small circle": the place comes first, 的 links the colour.
        "object": "{position}有{article}{colour}的{size}{noun}",
        "separator": "，",
        "last_separator": "，",
    },
}
LANGUAGES = tuple(LANGUAGE_TABLES)
SHIFT_LANGUAGES = ("de", "fr", "es", "zh")


def _table(language: str) -> dict:
    if language not in LANGUAGE_TABLES:
        raise ValueError(f"Unknown language {language!r}: shapes captions exist in {list(LANGUAGES)}.")
    return LANGUAGE_TABLES[language]


def describe_object(obj: ObjectLike, language: str = "en") -> str:
    """One object's phrase in `language`.

    Example:
    ```python
    >>> from grape_hf.shapes import ShapeObject, describe_object
    >>> describe_object(ShapeObject("cross", "green", "small", "left"), "fr")
    'une petite croix verte à gauche'
    ```
    """
    table = _table(language)
    noun, gender = table["nouns"][obj.shape]
    return table["object"].format(
        article=table["articles"][gender],
        size=table["sizes"][obj.size][gender],
        colour=table["colours"][obj.colour][gender],
        noun=noun,
        position=table["positions"][obj.position],
    )


def join_phrases(phrases: list[str], language: str = "en") -> str:
    """`["a", "b", "c"]` -> `"a, b and c"` with the language's separators."""
    table = _table(language)
    if len(phrases) == 1:
        return phrases[0]
    return table["separator"].join(phrases[:-1]) + table["last_separator"] + phrases[-1]


def describe(scene: SceneLike, language: str = "en") -> str:
    """The scene's caption in `language` (`"en"` is the canonical caption the retriever is trained on).

    Args:
        scene (`Scene`): The scene.
        language (`str`, *optional*, defaults to `"en"`): One of `LANGUAGES` (`en`, `de`, `fr`, `es`, `zh`).

    Example:
    ```python
    >>> from grape_hf.shapes import Scene, ShapeObject, describe
    >>> scene = Scene(
    ...     (ShapeObject("circle", "red", "small", "left"), ShapeObject("diamond", "blue", "large", "right"))
    ... )
    >>> describe(scene, "de")
    'ein kleiner roter Kreis links und eine große blaue Raute rechts'
    >>> describe(scene, "es")
    'un círculo rojo pequeño a la izquierda y un rombo azul grande a la derecha'
    >>> describe(scene, "zh")
    '左边有一个红色的小圆形，右边有一个蓝色的大菱形'
    ```
    """
    return join_phrases([describe_object(obj, language) for obj in scene.objects], language)
