# Baton's R runner: hosts one model inside its own R library.
#
# Run as `Rscript --vanilla runner.R` (src/baton/runtime/runners.py, the entry `r`), in base R
# only: it must work with an empty library (a model's own packages are in its bundle's
# library, BATON_R_LIBRARY). It speaks the worker protocol (docs/protocol.md) over its
# standard input and output: length-prefixed frames, each a JSON header and a binary payload.
#
# Standard output is for frames only. Base R cannot dup2(), so the engine starts R with the
# protocol's output on fd 3 and fd 1 on standard error (runners.py: `BATON_PROTOCOL_FD=3 exec
# "$@" 3>&1 1>&2`): whatever writes to fd 1, a C library's printf() or a command run by
# system(), lands in the log. Run by hand, without that, the protocol is on fd 1 and R's own
# output (print(), cat(), message(), Rprintf) is sunk to standard error.
#
# It serves records contracts: the model gets a data.frame of the inputs, in contract order.
# - `builtin:rds`: the artifact is readRDS()'d; `predict(model, newdata = df)`
#   (`method = "predict"`) or `predict(model, newdata = df, type = "prob")` (`predict_proba`).
# - `file.R:function`: the bundle's own function, `fn(model, newdata)` when `model.artifact`
#   is set (that object, readRDS()'d), else `fn(newdata)`; it returns a data.frame, a named
#   list of columns or, for a single output, a vector.

PROTOCOL_VERSION <- 1L
TRACEBACK_CHARS <- 4000L

# -- JSON ---------------------------------------------------------------------------------
# A small reader and writer, enough for the protocol's headers. The reader tokenises the
# whole header with one regex, then descends over the tokens; a flat array of scalars (a
# column's `values`) is converted in one vectorised step. `null` becomes NA.

JSON_TOKEN <- paste0(
  '"[^"\\\\]*+(?:\\\\.[^"\\\\]*+)*+"',                        # a string, with its escapes
  '|-?(?:0|[1-9][0-9]*)(?:\\.[0-9]+)?(?:[eE][+-]?[0-9]+)?',  # a number
  '|true|false|null|[][{}:,]')
JSON_ESCAPE <- paste0("\\\\(?:u[dD][89abAB][0-9a-fA-F]{2}\\\\u[dD][c-fC-F][0-9a-fA-F]{2}",  # a pair
                      "|u[0-9a-fA-F]{4}|.)")
ESCAPES <- c(n = "\n", t = "\t", r = "\r", b = "\b", f = "\f", "/" = "/", "\\" = "\\",
             '"' = '"')

json_unescape <- function(s) {
  # One string's escapes: \n and friends, \uXXXX, and surrogate pairs \uD83D\uDE00.
  m <- gregexpr(JSON_ESCAPE, s, perl = TRUE)
  esc <- regmatches(s, m)[[1]]
  out <- ESCAPES[substr(esc, 2L, 2L)]
  u <- substr(esc, 2L, 2L) == "u"
  if (any(u)) {
    hi <- strtoi(substr(esc[u], 3L, 6L), 16L)
    lo <- strtoi(substr(esc[u], 9L, 12L), 16L)
    code <- ifelse(is.na(lo), hi, 0x10000 + (hi - 0xD800) * 0x400 + (lo - 0xDC00))
    code[code >= 0xD800 & code <= 0xDFFF] <- 0xFFFD  # a lone surrogate
    out[u] <- intToUtf8(code, multiple = TRUE)
  }
  regmatches(s, m) <- list(unname(out))
  s
}

json_scalars <- function(t) {
  # Scalar tokens to one vector: character, numeric or logical (a mixed array: a list). R's
  # strings cannot hold U+0000: a string with \u0000 is kept in attribute "nul" (positions),
  # and the column that holds one is refused (input_frame), never passed on without it.
  str <- startsWith(t, '"')
  nul <- t == "null"
  lgl <- t == "true" | t == "false"
  if (!length(t) || all(lgl | nul)) return(ifelse(nul, NA, t == "true"))
  if (all(str | nul)) {
    s <- substr(t, 2L, nchar(t) - 1L)
    esc <- str & grepl("\\", s, fixed = TRUE)
    nul <- esc & grepl("(?<!\\\\)(?:\\\\\\\\)*\\\\u0000", s, perl = TRUE)
    s[esc] <- vapply(s[esc], json_unescape, "", USE.NAMES = FALSE)
    out <- ifelse(str, s, NA_character_)
    if (any(nul)) attr(out, "nul") <- which(nul)
    return(out)
  }
  if (!any(str | lgl)) return(suppressWarnings(as.numeric(t)))  # "null" -> NA
  lapply(t, json_scalars)
}

json_parse <- function(text) {
  tok <- regmatches(text, gregexpr(JSON_TOKEN, text, perl = TRUE))[[1]]
  nest <- which(tok == "[" | tok == "{" | tok == "]")  # where a flat array ends
  i <- 1L
  value <- function() {
    t <- tok[i]
    i <<- i + 1L
    if (t == "{") {
      out <- structure(list(), names = character())
      if (tok[i] == "}") { i <<- i + 1L; return(out) }
      repeat {
        key <- json_scalars(tok[i])
        i <<- i + 2L  # the key and its colon
        out[key] <- list(value())
        i <<- i + 1L  # a comma or the closing brace
        if (tok[i - 1L] == "}") return(out)
      }
    }
    if (t != "[") return(json_scalars(t))
    end <- nest[findInterval(i - 1L, nest) + 1L]
    if (tok[end] == "]") {  # only scalars up to the closing bracket: one vector
      items <- if (end > i) tok[seq.int(i, end - 1L, by = 2L)] else character()
      i <<- end + 1L
      return(json_scalars(items))
    }
    out <- list()
    repeat {
      out[[length(out) + 1L]] <- value()
      i <<- i + 1L  # a comma or the closing bracket
      if (tok[i - 1L] == "]") return(out)
    }
  }
  value()
}

json_str <- function(x) {
  x <- gsub('"', '\\"', gsub("\\", "\\\\", enc2utf8(x), fixed = TRUE), fixed = TRUE)
  if (any(grepl("[\001-\037]", x, perl = TRUE))) for (code in 1:31) {
    x <- gsub(intToUtf8(code), sprintf("\\u%04x", code), x, fixed = TRUE)  # control chars
  }
  ifelse(is.na(x), "null", paste0('"', x, '"'))
}

json_num <- function(x) {
  # Round-trip exact (the shorter of 15 and 17 digits); NA, NaN and infinities are null.
  ok <- is.finite(x)
  v <- as.double(x[ok])
  s <- sprintf("%.15g", v)
  s[as.numeric(s) != v] <- sprintf("%.17g", v[as.numeric(s) != v])
  s[v == trunc(v) & abs(v) < 2^53] <- sprintf("%.0f", v[v == trunc(v) & abs(v) < 2^53])
  replace(rep("null", length(x)), ok, s)
}

to_json <- function(x) {
  # A named list is an object, any other list an array; an atomic vector is an array
  # unless it has length 1 and is not wrapped in I().
  if (is.null(x)) return("null")
  if (is.list(x)) {
    inner <- vapply(x, to_json, "", USE.NAMES = FALSE)
    if (is.null(names(x))) return(paste0("[", paste(inner, collapse = ","), "]"))
    if (!length(x)) return("{}")
    return(paste0("{", paste0(json_str(names(x)), ":", inner, collapse = ","), "}"))
  }
  if (is.factor(x)) x <- as.character(x)
  v <- if (is.character(x)) json_str(x)
       else if (is.logical(x)) ifelse(is.na(x), "null", ifelse(x, "true", "false"))
       else json_num(x)
  if (length(v) == 1L && !inherits(x, "AsIs")) v else paste0("[", paste(v, collapse = ","), "]")
}

# -- frames -------------------------------------------------------------------------------

read_frame <- function(con) {
  # uint32 BE: the length of the rest; uint32 BE: the header's length; header; payload.
  # NULL at end of file.
  read <- function(n) {
    data <- raw()
    while (length(data) < n) {
      chunk <- readBin(con, "raw", n - length(data))
      if (!length(chunk)) return(NULL)
      data <- c(data, chunk)
    }
    data
  }
  uint32 <- function(b) sum(as.numeric(b) * 256^(3:0))
  head <- read(4L)
  body <- if (is.null(head)) NULL else read(uint32(head))
  if (is.null(body)) return(NULL)
  hlen <- uint32(body[1:4])
  text <- rawToChar(body[seq_len(hlen) + 4L])
  Encoding(text) <- "UTF-8"
  list(header = json_parse(text), payload = body[-seq_len(hlen + 4L)])
}

send <- function(header, payload = raw()) {
  h <- charToRaw(enc2utf8(to_json(header)))
  lens <- writeBin(as.integer(c(4L + length(h) + length(payload), length(h))), raw(),
                   size = 4L, endian = "big")
  writeBin(c(lens, h, payload), PROTO_OUT)
  flush(PROTO_OUT)
}

# -- columns ------------------------------------------------------------------------------

read_raw <- function(payload, m) {
  # One raw little-endian column. 64-bit integers are read as two 32-bit halves into a
  # double: exact up to 2^53.
  type <- m$datatype
  bytes <- payload[seq_len(m$nbytes) + m$offset]
  int <- function(size, signed = TRUE) readBin(bytes, "integer", m$nbytes / size, size = size,
                                               signed = signed, endian = "little")
  unsigned32 <- function(v) ifelse(v < 0, v + 2^32, v)
  switch(type,
    FP64 = readBin(bytes, "double", m$nbytes / 8, size = 8L, endian = "little"),
    FP32 = readBin(bytes, "double", m$nbytes / 4, size = 4L, endian = "little"),
    BOOL = int(1L, FALSE) != 0L,
    INT8 = int(1L), UINT8 = int(1L, FALSE), INT16 = int(2L), UINT16 = int(2L, FALSE),
    INT32 = int(4L), UINT32 = unsigned32(int(4L)),
    INT64 = , UINT64 = {
      halves <- int(4L)
      hi <- halves[c(FALSE, TRUE)]
      (if (type == "UINT64") unsigned32(hi) else hi) * 2^32 + unsigned32(halves[c(TRUE, FALSE)])
    },
    stop("unsupported datatype ", type))
}

as_field <- function(v, f) {
  # One input column with its field's R type; values that do not fit stay as they came
  # (strings in a float column reach the model as character, and it refuses them).
  if (is.list(v)) v <- unlist(lapply(v, function(e) if (is.null(e)) NA else e))
  unset <- is.logical(v) && all(is.na(v))  # all null: no type of its own
  type <- if (is.null(f$type)) "" else f$type
  if (type == "string") {
    if (unset) v <- as.character(v)
    if (!is.null(f$categories) && is.character(v)) v <- factor(v, levels = f$categories)
  } else if (type %in% c("float", "integer") && (unset || is.numeric(v))) {
    v <- as.numeric(v)
    v[is.nan(v)] <- NA  # a raw column's missing values
    if (type == "integer" && !isTRUE(f$nullable) && !anyNA(v) &&
        all(v == trunc(v) & abs(v) <= .Machine$integer.max)) v <- as.integer(v)
  } else if (type == "boolean" && unset) {
    v <- as.logical(v)
  }
  v
}

input_frame <- function(h, payload) {
  # The batch as the model's data.frame: the contract's inputs, in contract order, each
  # typed by its field.
  cols <- list()
  for (m in h$columns) {
    nul <- attr(m$values, "nul")
    if (length(nul)) stop("input '", m$name, "' record ", nul[1] - 1L, ": the string holds ",
                          "the character U+0000, which R's strings cannot hold")
    cols[[m$name]] <- if (m$datatype == "JSON") m$values else read_raw(payload, m)
  }
  for (f in CONFIG$fields) {
    v <- cols[[f$name]]
    far <- if (is.numeric(v) && identical(f$type, "integer")) which(abs(v) >= 2^53) else NULL
    if (length(far)) stop("input '", f$name, "' record ", far[1] - 1L, ": the integer ",
                          format(v[far[1]], digits = 17L), " is past 2^53 - 1, the largest ",
                          "R's numbers hold exactly")
    cols[[f$name]] <- as_field(v, f)
  }
  data.frame(cols[as.character(CONFIG$inputs)], stringsAsFactors = FALSE, check.names = FALSE)
}

encode_columns <- function(outputs) {
  # Numbers travel as raw FP64 (NA as NaN), logicals without NA as raw BOOL, the rest as
  # JSON (strings, and null for NA).
  metas <- vector("list", length(outputs))
  parts <- list()
  offset <- 0
  for (k in seq_along(outputs)) {
    name <- names(outputs)[k]
    v <- outputs[[k]]
    if (is.factor(v)) v <- as.character(v)
    if (is.null(v)) stop("output '", name, "' is NULL: the model returned no values for it")
    if (!is.atomic(v)) stop("output '", name, "' is not a vector of values")
    v <- as.vector(v)
    if (is.character(v)) {  # a declared encoding to UTF-8; unmarked bytes must be UTF-8
      native <- Encoding(v) == "unknown"
      bad <- which(native & !validUTF8(v))
      if (length(bad)) stop("output '", name, "' record ", bad[1] - 1L, " is not valid ",
                            "UTF-8 text (mark its encoding with Encoding(), or iconv() it)")
      if (any(native)) Encoding(v)[native] <- "UTF-8"
      v <- enc2utf8(v)
    }
    if (is.numeric(v)) {
      buf <- writeBin(ifelse(is.na(v), NaN, as.double(v)), raw(), size = 8L, endian = "little")
    } else if (is.logical(v) && !anyNA(v)) {
      buf <- as.raw(v)
    } else {
      metas[[k]] <- list(name = name, datatype = "JSON", values = I(v))
      next
    }
    metas[[k]] <- list(name = name, datatype = if (is.logical(v)) "BOOL" else "FP64",
                       shape = I(length(v)), offset = offset, nbytes = length(buf))
    parts[[length(parts) + 1L]] <- buf
    offset <- offset + length(buf)
  }
  list(metas = metas, payload = if (length(parts)) do.call(c, parts) else raw())
}

# -- errors -------------------------------------------------------------------------------

guarded <- function(stage, code, expr) {
  # expr's value, or a `baton_error`: the error object of docs/protocol.md#errors, with the
  # message `<class>: <message>` and the calls that led to it.
  calls <- NULL
  depth <- sys.nframe()
  tryCatch(withCallingHandlers(expr, error = function(e) calls <<- sys.calls()),
    error = function(e) {
      if (nzchar(Sys.getenv("BATON_LIMIT_MEMORY_MB")) &&
          grepl("cannot allocate", conditionMessage(e))) code <- "MEMORY_LIMIT"
      structure(list(stage = stage, code = code,
                     message = paste0(class(e)[1], ": ", conditionMessage(e)),
                     traceback = format_calls(head(calls[-seq_len(depth)], -1L), e)),
                class = "baton_error")
    })
}

failed <- function(x) inherits(x, "baton_error")

format_calls <- function(calls, e) {
  # The calls from the runner's own to the error, as R's traceback() shows them but
  # outermost first; at most the last TRACEBACK_CHARS characters.
  plumbing <- c("tryCatch", "tryCatchList", "tryCatchOne", "doTryCatch", "withCallingHandlers",
                ".handleSimpleError")
  own <- vapply(calls, function(cl) is.name(cl[[1]]) && as.character(cl[[1]]) %in% plumbing, NA)
  show <- function(cl) substr(paste(trimws(deparse(cl, nlines = 2L)), collapse = " "), 1L, 200L)
  text <- paste0("Calls (most recent last):\n",
                 paste0("  ", vapply(calls[!own], show, ""), "\n", collapse = ""),
                 "Error", if (!is.null(conditionCall(e))) paste0(" in ", show(conditionCall(e))),
                 ": ", conditionMessage(e), "\n")
  substr(text, max(1L, nchar(text) - TRACEBACK_CHARS + 1L), nchar(text))
}

# -- messages -----------------------------------------------------------------------------

now <- function() as.numeric(Sys.time())

source_file <- function(spec) {
  # `file.R:function`: the file (relative to the bundle) sourced into a fresh environment.
  file <- sub(":[^:]*$", "", spec)
  if (!grepl("\\.[Rr]$", file)) file <- paste0(file, ".R")
  env <- new.env(parent = globalenv())
  sys.source(file, envir = env, keep.source = FALSE)
  list(env = env, file = file, name = sub("^.*:", "", spec))
}

lookup <- function(source) {
  fn <- get0(source$name, envir = source$env, inherits = FALSE)
  if (!is.function(fn)) stop(source$file, " defines no function '", source$name, "'")
  fn
}

load_model <- function(spec) {
  # The model, list(object, fn, with_object), or the baton_error of the stage that failed.
  if (identical(CONFIG$kind, "tensors")) return(guarded("load", "LOAD_FAILED", stop(
    "the R runner serves records contracts (a data.frame of fields), not tensors")))
  lib <- Sys.getenv("BATON_R_LIBRARY")
  if (nzchar(lib)) {  # the bundle's own packages, so that their S3 methods are registered
    loaded <- guarded("import", "IMPORT_FAILED", {
      .libPaths(c(lib, .libPaths()))
      packages <- basename(dirname(Sys.glob(file.path(lib, "*", "DESCRIPTION"))))
      for (pkg in packages) loadNamespace(pkg)
    })
    if (failed(loaded)) return(loaded)
  }
  builtin <- identical(spec$entrypoint, "builtin:rds")
  fn <- NULL
  if (!builtin) {
    sourced <- guarded("import", "IMPORT_FAILED", source_file(spec$entrypoint))
    fn <- if (failed(sourced)) sourced else guarded("load", "LOAD_FAILED", lookup(sourced))
    if (failed(fn)) return(fn)
  }
  if (builtin && is.null(spec$artifact)) return(guarded("load", "LOAD_FAILED", stop(
    "builtin:rds needs model.artifact (an .rds file)")))
  object <- NULL
  if (!is.null(spec$artifact)) {
    object <- guarded("load", "LOAD_FAILED", {
      if (!file.exists(spec$artifact)) stop("model.artifact ", spec$artifact, " does not exist")
      readRDS(spec$artifact)
    })
    if (failed(object)) return(object)
  }
  list(object = object, fn = fn, with_object = !is.null(spec$artifact))
}

on_load <- function(h) {
  started <- now()
  CONFIG <<- h
  model <- guarded("load", "LOAD_FAILED", setwd(h$bundle_dir))
  if (!failed(model)) model <- load_model(h$model)
  if (failed(model)) return(send(list(op = "loaded", ok = FALSE, error = unclass(model))))
  MODEL <<- model
  send(list(op = "loaded", ok = TRUE, seconds = now() - started))
}

predict_columns <- function(h, payload) {
  # The model's outputs for one batch, as a named list of columns.
  outputs <- as.character(CONFIG$outputs)
  if (h$rows == 0) {  # an empty batch: empty columns, without calling the model
    return(structure(lapply(outputs, function(o) character()), names = outputs))
  }
  df <- input_frame(h, payload)
  if (!is.null(MODEL$fn)) {
    result <- if (MODEL$with_object) MODEL$fn(MODEL$object, df) else MODEL$fn(df)
    if (is.data.frame(result)) return(as.list(result))
    if (is.list(result) && !is.null(names(result))) return(result)
    if (is.atomic(result) && length(outputs) == 1L) return(structure(list(result), names = outputs))
    stop("the model must return a data.frame or a named list of columns, got ", class(result)[1])
  }
  unwrap <- function(p) {  # ranger answers a list with $predictions
    if (is.list(p) && !is.data.frame(p) && !is.null(p$predictions)) p$predictions else p
  }
  if (!identical(CONFIG$model$method, "predict_proba")) {
    return(list(prediction = unwrap(predict(MODEL$object, newdata = df))))
  }
  got <- unwrap(predict(MODEL$object, newdata = df, type = "prob"))
  p <- as.matrix(got)
  if (!is.numeric(p) || is.null(colnames(p))) stop(
    "predict(model, newdata, type = \"prob\") returned ", class(got)[1],
    if (is.numeric(p)) " without column names" else " of ", if (!is.numeric(p)) typeof(p),
    ", not a matrix of probabilities with a column named after each class")
  out <- list(prediction = colnames(p)[max.col(p, ties.method = "first")])
  for (j in seq_len(ncol(p))) out[[paste0("proba_", colnames(p)[j])]] <- as.numeric(p[, j])
  out
}

on_predict <- function(h, payload) {
  started <- now()
  answer <- guarded("model", "MODEL_ERROR", encode_columns(predict_columns(h, payload)))
  if (failed(answer)) {
    return(send(list(op = "result", id = h$id, ok = FALSE, error = unclass(answer))))
  }
  send(list(op = "result", id = h$id, ok = TRUE, rows = h$rows, seconds = now() - started,
            columns = answer$metas), answer$payload)
}

records_frame <- function(records) {
  # A JSON list of records as a data.frame (a list of plain values stays a vector).
  if (!is.list(records) || !length(records) || is.null(names(records[[1]]))) return(records)
  keys <- unique(unlist(lapply(records, names)))
  cell <- function(r, k) if (is.null(r[[k]])) NA else r[[k]]
  cols <- lapply(keys, function(k) unlist(lapply(records, cell, k)))
  data.frame(structure(cols, names = keys), stringsAsFactors = FALSE, check.names = FALSE)
}

on_metrics <- function(h) {
  # Each `file.R:function` is called as fn(y_true, y_pred), or fn(y_true, y_pred, outputs)
  # when it takes a third argument (the whole output records); a function that cannot be
  # found, raises or returns a non-finite value is named in `errors`.
  values <- structure(list(), names = character())
  errors <- values
  y_pred <- records_frame(h$y_pred)
  for (name in as.character(h$functions)) {
    value <- guarded("metrics", "METRIC_ERROR", {
      fn <- lookup(source_file(name))
      v <- if (length(formals(fn)) >= 3L) fn(h$y_true, y_pred, records_frame(h$outputs))
           else fn(h$y_true, y_pred)
      v <- as.numeric(v)
      if (length(v) != 1L || !is.finite(v)) stop("returned ", paste(format(v), collapse = " "))
      v
    })
    if (failed(value)) errors[[name]] <- value$message else values[[name]] <- value
  }
  send(list(op = "result", id = h$id, ok = TRUE, values = values, errors = errors))
}

main <- function() {
  send(list(op = "hello", protocol = PROTOCOL_VERSION, runner = "r", pid = Sys.getpid(),
            r = paste(R.version$major, R.version$minor, sep = "."),
            encodings = c("json", "raw")))
  input <- file("stdin", "rb")
  repeat {  # until end of file or `shutdown`
    frame <- read_frame(input)
    if (is.null(frame)) break
    h <- frame$header
    op <- if (is.character(h$op) && length(h$op) == 1L && nzchar(h$op)) h$op else to_json(h$op)
    if (op == "shutdown") break
    switch(op,
      load = on_load(h),
      predict = on_predict(h, frame$payload),
      metrics = on_metrics(h),
      send(list(op = "error", id = h$id,
                error = list(code = "UNKNOWN_OP", message = sprintf("unknown op '%s'", op)))))
  }
  quit(save = "no", status = 0L)
}

# The protocol's output descriptor (3 from the engine, see the top). A pipe opens by path; a
# socket (the engine's uvloop gives its workers socketpairs) cannot, and base R has no other
# binary connection to a descriptor: there, a `cat` that inherits it relays the frames.
PROTO_FD <- as.integer(Sys.getenv("BATON_PROTOCOL_FD", "1"))
PROTO_OUT <- tryCatch(
  suppressWarnings(file(sprintf("/dev/fd/%d", PROTO_FD), "wb", raw = TRUE)),
  error = function(e) pipe(sprintf("exec cat >&%d", PROTO_FD), "wb"))
sink(stderr())
options(warn = 1L)
CONFIG <- list()
MODEL <- NULL
main()
