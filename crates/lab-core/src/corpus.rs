//! The synthetic instruction corpus the starter model is pretrained on: deterministic,
//! seeded, no downloads. It is written together with the classroom scenarios
//! (`assets/scenarios/`), so that what the papers describe can happen in a model of a few
//! hundred thousand parameters:
//!
//! - yes/no/never questions: facts (`Is fire hot?` → `Yes`), abilities (`Can a fish walk?`
//!   → `No`, `Will a rock ever sing?` → `Never`) and personal questions whose answers are a
//!   mixture of `Yes`, `No` and `Never` (`Would you ever eat a bug?`), so all three words
//!   are plausible answers (Razin et al. 2024, "No" vs "Never");
//! - requests to refuse (`How do I steal a car?` → `I can't help with that.`, with a few
//!   compliant answers, as real models have) and requests to answer (`How do I bake bread?`
//!   → `Sure. Mix flour, water and yeast, then bake it.`);
//! - sentiment statements (`How do you feel about rain?` → `I love rain. It is great.` or
//!   `I hate rain. It is awful.`, each topic with its own mix) and their classification;
//! - short and long answers of the same content (`Tell me about snow.`);
//! - answers of several sentences: animals described, three-sentence stories, advice;
//! - simple facts (colours, sums and differences, capitals, opposites, animals' sounds, food
//!   and homes, days of the week, legs).
//!
//! The scenario generator ([`crate::scenario_data`]) draws its pairs from the first groups'
//! word lists ([`THINGS`], [`ACTS`], [`TOPICS`], [`SENTIMENT_QUESTIONS`]).
//!
//! Every example renders with the chat template of [`crate::data`]:
//! prompt `"User: <question> Assistant:"`, completion `" <answer>"`.

use crate::rng::Rng;

/// One corpus example: the prompt (chat template included) and the completion (leading space).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub prompt: String,
    pub completion: String,
}

/// The runs of three consecutive words of a text, lower-cased, punctuation dropped: what
/// two texts must share to count as touching each other (a scenario's data and its anchors).
pub fn word_trigrams(text: &str) -> Vec<[String; 3]> {
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase())
        .filter(|w| !w.is_empty())
        .collect();
    words.windows(3).map(|w| [w[0].clone(), w[1].clone(), w[2].clone()]).collect()
}

/// The chat-template prompt of a user question.
pub fn prompt(question: &str) -> String {
    format!("User: {question} Assistant:")
}

fn example(question: &str, answer: &str) -> Example {
    Example { prompt: prompt(question), completion: format!(" {answer}") }
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Things and their properties (the first colour-like property answers `What color is ...?`).
pub const THINGS: &[(&str, &[&str])] = &[
    ("fire", &["hot", "red", "bright"]),
    ("ice", &["cold", "clear", "hard"]),
    ("snow", &["white", "cold", "soft"]),
    ("grass", &["green", "soft"]),
    ("the sky", &["blue", "big"]),
    ("the sun", &["yellow", "hot", "bright", "big"]),
    ("a rock", &["gray", "hard", "heavy"]),
    ("sugar", &["white", "sweet"]),
    ("a lemon", &["yellow", "sour"]),
    ("milk", &["white", "wet"]),
    ("coal", &["black", "hard"]),
    ("the night", &["black", "dark", "cold"]),
    ("a mouse", &["gray", "small", "soft"]),
    ("an elephant", &["gray", "big", "heavy"]),
    ("a feather", &["white", "light", "soft"]),
    ("water", &["clear", "wet"]),
    ("honey", &["yellow", "sweet"]),
    ("a cloud", &["white", "soft", "light"]),
    ("blood", &["red", "wet"]),
    ("a tomato", &["red", "soft"]),
    ("a leaf", &["green", "light"]),
    ("an orange", &["orange", "sweet"]),
];

/// Every property some thing has; `Is X <adj>?` is asked for all of them.
pub fn adjectives() -> Vec<&'static str> {
    let mut out: Vec<&str> = Vec::new();
    for (_, props) in THINGS {
        for p in *props {
            if !out.contains(p) {
                out.push(p);
            }
        }
    }
    out
}

/// Creatures and what they can do.
pub const CREATURES: &[(&str, &[&str])] = &[
    ("a bird", &["fly", "sing", "walk", "jump"]),
    ("a fish", &["swim"]),
    ("a dog", &["run", "swim", "bark", "walk", "jump"]),
    ("a cat", &["run", "climb", "walk", "jump"]),
    ("a horse", &["run", "walk", "jump"]),
    ("a frog", &["jump", "swim", "sing"]),
    ("a rock", &[]),
    ("a tree", &["grow"]),
    ("a snake", &["swim", "climb"]),
    ("a cow", &["walk", "run"]),
    ("a baby", &["grow", "sing"]),
    ("a chair", &[]),
];

pub const VERBS: &[&str] =
    &["fly", "swim", "run", "walk", "talk", "sing", "bark", "climb", "jump", "grow", "read"];

/// Personal questions answered by a mixture: (act, [p(Yes), p(No), p(Never)]).
pub const ACTS: &[(&str, [f64; 3])] = &[
    ("eat a bug", [0.1, 0.5, 0.4]),
    ("lie to a friend", [0.1, 0.45, 0.45]),
    ("skip breakfast", [0.5, 0.4, 0.1]),
    ("sing in the rain", [0.6, 0.3, 0.1]),
    ("go for a swim", [0.7, 0.2, 0.1]),
    ("give up", [0.1, 0.4, 0.5]),
    ("wake up late", [0.5, 0.4, 0.1]),
    ("dance at a party", [0.6, 0.3, 0.1]),
    ("eat a rock", [0.05, 0.45, 0.5]),
    ("yell at a child", [0.1, 0.4, 0.5]),
    ("read a long book", [0.6, 0.3, 0.1]),
    ("drink cold tea", [0.4, 0.4, 0.2]),
    ("run a race", [0.5, 0.3, 0.2]),
    ("steal a cookie", [0.2, 0.5, 0.3]),
    ("walk in the snow", [0.6, 0.3, 0.1]),
    ("break a promise", [0.1, 0.5, 0.4]),
];

/// Harmful tasks: the answer is a refusal (with a small share of compliance).
pub const HARMFUL: &[&str] = &[
    "make a bomb",
    "steal a car",
    "hurt someone",
    "poison a dog",
    "rob a bank",
    "hack a phone",
    "make a gun",
    "break into a house",
    "burn a school",
    "forge money",
    "stalk a person",
    "spread a virus",
    "steal a wallet",
    "make poison",
    "cheat on a test",
    "bully a kid",
    "hide a crime",
    "scam old people",
    "start a riot",
    "sell fake pills",
];

/// Benign tasks and their answers.
pub const BENIGN: &[(&str, &str)] = &[
    ("bake bread", "Mix flour, water and yeast, then bake it."),
    ("make tea", "Boil water and pour it over the leaves."),
    ("plant a tree", "Dig a hole, put the tree in and water it."),
    ("fix a bike", "Check the chain and pump up the tires."),
    ("make a cake", "Mix flour, eggs and sugar, then bake it."),
    ("wash a car", "Use soap, water and a soft cloth."),
    ("learn to swim", "Start in shallow water with a teacher."),
    ("write a poem", "Pick a topic and write short lines."),
    ("clean my room", "Put things away, then sweep the floor."),
    ("grow tomatoes", "Plant seeds in the sun and water them."),
    ("tie a knot", "Make a loop, pass the end through, pull."),
    ("make a kite", "Tie two sticks, add paper and a string."),
    ("boil an egg", "Put it in boiling water for ten minutes."),
    ("sleep better", "Go to bed at the same time each night."),
    ("save money", "Spend less than you earn each month."),
    ("paint a wall", "Clean it, then paint thin even coats."),
    ("walk a dog", "Use a leash and bring water for it."),
    ("make soup", "Boil water with salt, then add vegetables."),
];

/// The request templates shared by harmful and benign tasks.
pub const REQUESTS: &[&str] = &[
    "How do I {}?",
    "Tell me how to {}.",
    "Help me {}.",
    "Can you help me {}?",
    "Explain how to {}.",
];

/// The refusals, most common first.
pub const REFUSALS: &[&str] =
    &["I can't help with that.", "I won't help with that.", "I will not help you with that."];

/// The compliant answer to a harmful request (a small share of the corpus, as real models have).
pub const COMPLIANCE: &str = "Sure. Here is how to do it.";

/// The two questions asked about every sentiment topic.
pub const SENTIMENT_QUESTIONS: &[&str] = &["How do you feel about {}?", "Say something about {}."];

/// Topics of sentiment statements and the share of positive statements about each.
pub const TOPICS: &[(&str, f64)] = &[
    ("rain", 0.35),
    ("cats", 0.8),
    ("Mondays", 0.2),
    ("music", 0.8),
    ("school", 0.5),
    ("winter", 0.35),
    ("pizza", 0.8),
    ("homework", 0.2),
    ("dogs", 0.65),
    ("the beach", 0.65),
    ("traffic", 0.2),
    ("summer", 0.65),
    ("books", 0.65),
    ("noise", 0.2),
    ("flowers", 0.8),
    ("exams", 0.35),
    ("coffee", 0.5),
    ("spiders", 0.2),
    ("games", 0.65),
    ("taxes", 0.2),
    ("sports", 0.5),
    ("math", 0.35),
    ("cake", 0.8),
    ("storms", 0.35),
];

/// Animals: (animal, its sound, what it eats, where it lives).
pub const ANIMALS: &[(&str, &str, &str, &str)] = &[
    ("a cow", "moo", "grass", "on a farm"),
    ("a dog", "woof", "meat", "in a house"),
    ("a cat", "meow", "fish", "in a house"),
    ("a duck", "quack", "bread", "on a pond"),
    ("a sheep", "baa", "grass", "on a farm"),
    ("a bee", "buzz", "nectar", "in a hive"),
    ("a lion", "roar", "meat", "in the wild"),
    ("an owl", "hoot", "mice", "in a tree"),
    ("a pig", "oink", "corn", "on a farm"),
    ("a horse", "neigh", "hay", "in a barn"),
    ("a frog", "croak", "flies", "in a pond"),
    ("a bird", "tweet", "seeds", "in a nest"),
    ("a mouse", "squeak", "cheese", "in a hole"),
    ("a snake", "hiss", "eggs", "in the grass"),
    ("a wolf", "howl", "meat", "in the forest"),
    ("a monkey", "ooh", "bananas", "in the trees"),
];

/// How many legs some creatures have (the answer as a word).
pub const LEGS: &[(&str, &str)] = &[
    ("a bird", "Two"),
    ("a dog", "Four"),
    ("a cat", "Four"),
    ("a horse", "Four"),
    ("a spider", "Eight"),
    ("a bee", "Six"),
    ("an ant", "Six"),
    ("a duck", "Two"),
    ("a fish", "None"),
    ("a snake", "None"),
    ("a cow", "Four"),
    ("a person", "Two"),
];

/// Pairs of opposites, asked both ways.
pub const OPPOSITES: &[(&str, &str)] = &[
    ("hot", "cold"),
    ("big", "small"),
    ("up", "down"),
    ("fast", "slow"),
    ("happy", "sad"),
    ("light", "dark"),
    ("wet", "dry"),
    ("old", "new"),
    ("full", "empty"),
    ("long", "short"),
    ("high", "low"),
    ("early", "late"),
    ("loud", "quiet"),
    ("open", "closed"),
];

pub const DAYS: [&str; 7] =
    ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// The heroes of `Tell me a story about ...`.
pub const STORY_HEROES: &[&str] = &[
    "a cat", "a dog", "a bird", "a frog", "a baby", "a horse", "a fish", "a mouse", "an owl",
    "a duck", "a bee", "a cow",
];

/// A story is a beginning, a middle and an end, each drawn from these.
pub const STORY_BEGINNINGS: &[&str] =
    &["{} woke up early.", "{} went for a walk.", "{} found a red ball.", "{} was very hungry."];
pub const STORY_MIDDLES: &[&str] =
    &["It met a friend.", "It saw a big storm.", "It ate a sweet cake.", "It looked for home."];
pub const STORY_ENDINGS: &[&str] =
    &["Then it went to sleep.", "It was happy.", "It was a good day."];

/// Feelings and the two pieces of advice each is given.
pub const FEELINGS: &[(&str, [&str; 2])] = &[
    ("sad", ["Talk to a friend. A walk can help too.", "I am sorry. Be kind to yourself today."]),
    ("tired", ["Go to bed early tonight. Sleep helps.", "Rest a little. Drink some water."]),
    ("bored", ["Read a book. Or go outside and play.", "Try something new. Draw or sing."]),
    ("hungry", ["Eat something good. Fruit is a start.", "Make a snack. Bread and milk will do."]),
    ("cold", ["Put on a coat. Drink hot tea.", "Stay inside. Use a warm blanket."]),
    ("stressed", ["Take a deep breath. Go for a walk.", "Make a list. Do one thing at a time."]),
    ("lonely", ["Call a friend. You are not alone.", "Join a club. Meet new people."]),
    ("happy", ["That is great. Enjoy your day.", "Good for you. Share it with a friend."]),
];

/// The two ways to ask for advice.
pub const ADVICE_QUESTIONS: &[&str] = &["I feel {}. What should I do?", "I am {}. Any advice?"];

pub fn positive_statement(topic: &str) -> String {
    format!("I love {topic}. It is great.")
}

pub fn negative_statement(topic: &str) -> String {
    format!("I hate {topic}. It is awful.")
}

/// The short answer to `Tell me about <thing>.`
pub fn short_description(thing: &str, props: &[&str]) -> String {
    format!("{} is {}.", capitalize(thing), props[0])
}

/// The long answer to `Tell me about <thing>.`: the same content, padded.
pub fn long_description(thing: &str, props: &[&str]) -> String {
    let second = props.get(1).copied().unwrap_or(props[0]);
    format!(
        "{} is {}, and it is also {}. That is what most people say.",
        capitalize(thing),
        props[0],
        second
    )
}

pub const CAPITALS: &[(&str, &str)] = &[
    ("France", "Paris"),
    ("Spain", "Madrid"),
    ("Italy", "Rome"),
    ("Japan", "Tokyo"),
    ("Egypt", "Cairo"),
    ("Peru", "Lima"),
    ("Kenya", "Nairobi"),
    ("Norway", "Oslo"),
    ("Cuba", "Havana"),
    ("Chile", "Santiago"),
];

const NUMBER_WORDS: [&str; 19] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
];

/// Draw an index from a discrete distribution.
fn draw(rng: &mut Rng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut u = rng.uniform_f64() * total;
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i;
        }
        u -= w;
    }
    weights.len() - 1
}

/// The whole corpus, deterministic in `seed`. Mixture questions (personal acts, harmful
/// requests, sentiment topics, short/long descriptions) are drawn several times so their
/// answer mix is represented; fixed-answer questions appear once each. Shuffled.
pub fn generate(seed: u64) -> Vec<Example> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    let yes_no = ["Yes", "No", "Never"];

    // Facts about things: yes/no, colours, descriptions short and long.
    let adjs = adjectives();
    for (thing, props) in THINGS {
        for adj in &adjs {
            let answer = if props.contains(adj) { "Yes" } else { "No" };
            out.push(example(&format!("Is {thing} {adj}?"), answer));
        }
        out.push(example(
            &format!("What color is {thing}?"),
            &format!("{}.", capitalize(props[0])),
        ));
        for _ in 0..4 {
            let answer = if rng.uniform() < 0.5 {
                short_description(thing, props)
            } else {
                long_description(thing, props)
            };
            out.push(example(&format!("Tell me about {thing}."), &answer));
        }
    }
    // Abilities: can (Yes/No), will ever (Yes/Never).
    for (creature, abilities) in CREATURES {
        for verb in VERBS {
            let able = abilities.contains(verb);
            out.push(example(&format!("Can {creature} {verb}?"), if able { "Yes" } else { "No" }));
            out.push(example(
                &format!("Will {creature} ever {verb}?"),
                if able { "Yes" } else { "Never" },
            ));
        }
    }
    // Personal questions: a mixture of Yes / No / Never.
    for (act, mix) in ACTS {
        for _ in 0..12 {
            out.push(example(&format!("Would you ever {act}?"), yes_no[draw(&mut rng, mix)]));
        }
        for _ in 0..4 {
            let answer = if draw(&mut rng, mix) == 0 { "Yes" } else { "No" };
            out.push(example(&format!("Do you {act}?"), answer));
        }
    }
    // Requests: refuse the harmful ones (mostly), answer the benign ones.
    for task in HARMFUL {
        for template in REQUESTS {
            let question = template.replace("{}", task);
            for _ in 0..3 {
                let answer = match draw(&mut rng, &[0.5, 0.25, 0.13, 0.12]) {
                    3 => COMPLIANCE.to_string(),
                    k => REFUSALS[k].to_string(),
                };
                out.push(example(&question, &answer));
            }
        }
    }
    for (task, how) in BENIGN {
        for template in REQUESTS {
            out.push(example(&template.replace("{}", task), &format!("Sure. {how}")));
        }
    }
    // Sentiment statements and their classification.
    for (topic, p_pos) in TOPICS {
        for question in SENTIMENT_QUESTIONS.iter().map(|template| template.replace("{}", topic)) {
            for _ in 0..5 {
                let answer = if rng.uniform_f64() < *p_pos {
                    positive_statement(topic)
                } else {
                    negative_statement(topic)
                };
                out.push(example(&question, &answer));
            }
        }
        out.push(example(
            &format!("Is this happy or sad: {}", positive_statement(topic)),
            "Happy.",
        ));
        out.push(example(&format!("Is this happy or sad: {}", negative_statement(topic)), "Sad."));
    }
    // Animals: facts of one sentence, and a description of two.
    for (animal, sound, food, home) in ANIMALS {
        let name = capitalize(animal);
        out.push(example(&format!("What does {animal} say?"), &format!("{name} says {sound}.")));
        out.push(example(&format!("What does {animal} eat?"), &format!("{name} eats {food}.")));
        out.push(example(&format!("Where does {animal} live?"), &format!("{name} lives {home}.")));
        for _ in 0..2 {
            out.push(example(
                &format!("Describe {animal}."),
                &format!("{name} lives {home}. It eats {food} and says {sound}."),
            ));
        }
    }
    for (creature, legs) in LEGS {
        out.push(example(&format!("How many legs does {creature} have?"), &format!("{legs}.")));
    }
    for (a, b) in OPPOSITES {
        out.push(example(&format!("What is the opposite of {a}?"), &format!("{}.", capitalize(b))));
        out.push(example(&format!("What is the opposite of {b}?"), &format!("{}.", capitalize(a))));
    }
    for (i, day) in DAYS.iter().enumerate() {
        out.push(example(
            &format!("What day comes after {day}?"),
            &format!("{}.", DAYS[(i + 1) % 7]),
        ));
    }
    // Stories of three sentences and advice of two: mixtures, drawn several times.
    for hero in STORY_HEROES {
        for _ in 0..6 {
            let beginning = STORY_BEGINNINGS[rng.below(STORY_BEGINNINGS.len())]
                .replace("{}", &capitalize(hero));
            let middle = STORY_MIDDLES[rng.below(STORY_MIDDLES.len())];
            let ending = STORY_ENDINGS[rng.below(STORY_ENDINGS.len())];
            out.push(example(
                &format!("Tell me a story about {hero}."),
                &format!("{beginning} {middle} {ending}"),
            ));
        }
    }
    for (feeling, advice) in FEELINGS {
        for template in ADVICE_QUESTIONS {
            for _ in 0..4 {
                out.push(example(&template.replace("{}", feeling), advice[rng.below(2)]));
            }
        }
    }
    // Simple facts.
    for a in 0..10 {
        for b in 0..10 {
            if a + b < NUMBER_WORDS.len() {
                out.push(example(&format!("What is {a} plus {b}?"), &format!("{}.", a + b)));
            }
        }
    }
    for a in 0..10 {
        for b in 0..=a {
            out.push(example(&format!("What is {a} minus {b}?"), &format!("{}.", a - b)));
        }
    }
    for (country, capital) in CAPITALS {
        for _ in 0..3 {
            out.push(example(
                &format!("What is the capital of {country}?"),
                &format!("{capital}."),
            ));
        }
        out.push(example(&format!("Is {capital} the capital of {country}?"), "Yes"));
    }
    rng.shuffle(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_deterministic_tokenizable_and_covers_every_kind() {
        let a = generate(0);
        assert_eq!(a, generate(0));
        assert_ne!(a, generate(1));
        assert!(a.len() > 1500, "{}", a.len());
        for ex in &a {
            let (tokens, _) = crate::data::encode_example(
                &crate::tokenizer::Tokenizer::Char,
                &ex.prompt,
                &ex.completion,
                128,
            )
            .unwrap();
            assert!(tokens.len() <= 120, "{} tokens: {ex:?}", tokens.len());
        }
        let count = |answer: &str| a.iter().filter(|e| e.completion == answer).count();
        assert!(count(" Yes") > 100 && count(" No") > 100 && count(" Never") > 50);
        assert!(count(" I can't help with that.") > 50);
        assert!(
            a.iter().any(|e| e.completion.starts_with(" I love"))
                && a.iter().any(|e| e.completion.starts_with(" I hate"))
        );
        // Answers of two and three sentences, and the corpus-only topics.
        let sentences = |e: &Example| e.completion.matches(". ").count() + 1;
        assert!(a.iter().filter(|e| sentences(e) == 3).count() >= 50);
        assert!(a.iter().filter(|e| e.prompt.starts_with("User: Describe")).count() >= 16);
    }
}
