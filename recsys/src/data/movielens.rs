//! The GroupLens MovieLens formats: 100K (`u.data` tab-separated, `u.item` pipe-separated with
//! 19 genre flags), 1M (`ratings.dat`, `movies.dat`, `::`-separated) and "latest"
//! (`ratings.csv`, `movies.csv` with a header and quoted titles). Titles end in `(YEAR)`,
//! which becomes the year.

use std::collections::HashMap;
use std::path::Path;

use super::text::{self, lines};
use super::{bad_line, ItemMeta, RawDataset, RawInteraction};
use crate::Result;

/// The genre flags of `u.item`, in column order (`u.genre`).
pub const ML100K_GENRES: [&str; 19] = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
];

/// `user item rating timestamp` records; `split` cuts one line into fields.
fn read_ratings(
    path: &Path,
    skip_header: bool,
    split: impl Fn(&str) -> Result<Vec<String>, String>,
) -> Result<Vec<RawInteraction>> {
    let body = text::read(path)?;
    let mut interactions = Vec::new();
    for (n, line) in lines(&body).skip(usize::from(skip_header)) {
        let parse = || -> Result<RawInteraction, String> {
            let fields = split(line)?;
            let [user, item, rating, timestamp] = fields.as_slice() else {
                return Err(format!(
                    "{} fields, expected 4 (user, item, rating, timestamp)",
                    fields.len()
                ));
            };
            let rating: f64 = text::number(rating, "rating")?;
            if !rating.is_finite() {
                return Err(format!("rating `{rating}` is not finite"));
            }
            Ok(RawInteraction {
                user: user.trim().to_string(),
                item: item.trim().to_string(),
                rating: Some(rating),
                timestamp: text::timestamp(timestamp)?,
            })
        };
        interactions.push(parse().map_err(|reason| bad_line(path, n, reason))?);
    }
    Ok(interactions)
}

fn split_on(sep: &'static str) -> impl Fn(&str) -> Result<Vec<String>, String> {
    move |line| Ok(line.split(sep).map(str::to_string).collect())
}

fn dataset(
    dir: &Path,
    interactions: Vec<RawInteraction>,
    items: HashMap<String, ItemMeta>,
) -> RawDataset {
    RawDataset {
        name: dir
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("movielens")
            .to_string(),
        interactions,
        items,
    }
}

/// MovieLens-100K: `u.data` and, when present, `u.item`.
pub fn read_100k(dir: &Path) -> Result<RawDataset> {
    let interactions = read_ratings(&dir.join("u.data"), false, split_on("\t"))?;
    let path = dir.join("u.item");
    let mut items = HashMap::new();
    if path.is_file() {
        for (n, line) in lines(&text::read(&path)?) {
            let fields: Vec<&str> = line.split('|').collect();
            if fields.len() != 5 + ML100K_GENRES.len() {
                return Err(bad_line(
                    &path,
                    n,
                    format!(
                        "{} |-separated fields, expected 24 (id, title, dates, URL, 19 genre flags)",
                        fields.len()
                    ),
                ));
            }
            let (title, mut year) = text::title_and_year(fields[1]);
            if year.is_none() {
                // The release date `01-Jan-1995` when the title carries no year.
                year = fields[2].rsplit('-').next().and_then(|y| y.parse().ok());
            }
            let mut genres = Vec::new();
            for (flag, genre) in fields[5..].iter().zip(ML100K_GENRES) {
                match flag.trim() {
                    "1" => genres.push(genre.to_string()),
                    "0" => {}
                    other => {
                        return Err(bad_line(
                            &path,
                            n,
                            format!("genre flag for {genre} is `{other}`, expected 0 or 1"),
                        ))
                    }
                }
            }
            items.insert(
                fields[0].trim().to_string(),
                ItemMeta {
                    title,
                    year,
                    genres,
                },
            );
        }
    }
    Ok(dataset(dir, interactions, items))
}

/// Movies files of 1M and latest: `id`, `Title (Year)`, `Genre|Genre`.
fn read_movies(
    path: &Path,
    skip_header: bool,
    split: impl Fn(&str) -> Result<Vec<String>, String>,
) -> Result<HashMap<String, ItemMeta>> {
    let mut items = HashMap::new();
    if !path.is_file() {
        return Ok(items);
    }
    for (n, line) in lines(&text::read(path)?).skip(usize::from(skip_header)) {
        let fields = split(line).map_err(|reason| bad_line(path, n, reason))?;
        let [id, title, genres] = fields.as_slice() else {
            return Err(bad_line(
                path,
                n,
                format!("{} fields, expected 3 (id, title, genres)", fields.len()),
            ));
        };
        let (title, year) = text::title_and_year(title);
        let genres = genres
            .split('|')
            .map(str::trim)
            .filter(|g| !g.is_empty() && *g != "(no genres listed)")
            .map(str::to_string)
            .collect();
        items.insert(
            id.trim().to_string(),
            ItemMeta {
                title,
                year,
                genres,
            },
        );
    }
    Ok(items)
}

/// MovieLens-1M: `ratings.dat` and, when present, `movies.dat`.
pub fn read_1m(dir: &Path) -> Result<RawDataset> {
    let interactions = read_ratings(&dir.join("ratings.dat"), false, split_on("::"))?;
    let items = read_movies(&dir.join("movies.dat"), false, split_on("::"))?;
    Ok(dataset(dir, interactions, items))
}

/// MovieLens "latest" (and 20M/25M/32M): `ratings.csv` and, when present, `movies.csv`.
pub fn read_latest(dir: &Path) -> Result<RawDataset> {
    let interactions = read_ratings(&dir.join("ratings.csv"), true, text::csv_fields)?;
    let items = read_movies(&dir.join("movies.csv"), true, text::csv_fields)?;
    Ok(dataset(dir, interactions, items))
}
