// The message list of the open conversation as a window: never the whole
// room, only about WINDOW items around what the user looks at. It opens on
// the newest items; scrolling near the top loads older ones from the store
// (the window then lets go of the newest, which come back on scrolling
// down). Items arrive in batches and go into the page as one
// DocumentFragment, with a day separator where the day changes. While the
// user is at the bottom, new items and images that finish loading keep
// the view at the bottom. Nothing here moves keyboard focus.

const WINDOW = 100; // items kept when trimming
const MAX_ITEMS = 250; // trimmed back to WINDOW beyond this
const PAGE = 60; // items loaded per scroll step
const EDGE_PX = 300; // this close to an end loads more
const STUCK_PX = 40; // this close to the bottom counts as at the bottom

// One formatter, made once: toLocaleDateString builds a new one per call,
// which costs more than the rest of rendering an item.
const DAY_FORMAT = new Intl.DateTimeFormat(undefined, { weekday: "long", year: "numeric", month: "long", day: "numeric" });
const dayOf = (ts) => DAY_FORMAT.format(ts);

function separatorFor(day) {
  const separator = document.createElement("li");
  separator.className = "day";
  separator.dataset.day = day;
  separator.setAttribute("role", "separator");
  separator.textContent = day;
  return separator;
}

export class Timeline {
  /**
   * `list`: the <ol>; `render(item)`: an <li> for one item; `load(direction,
   * seq, limit)`: resolves with up to `limit` stored items before/after `seq`,
   * in seq order.
   */
  constructor(list, { render, load }) {
    this.list = list;
    this.render = render;
    this.load = load;
    this.roomId = null;
    this.hasOlder = false;
    this.hasNewer = false; // newer items are in the store but not in the window
    this.isStuck = true;
    this.isLoading = false;
    list.addEventListener("scroll", () => this.onScroll(), { passive: true });
    // An image whose size was not known grows when it loads: stay at the bottom.
    list.addEventListener("load", () => this.isStuck && this.toBottom(), true);
    // The list itself shrinks when something above or below it appears (a
    // notice, the reply bar over the composer): stay at the bottom then too.
    if (typeof ResizeObserver === "function") new ResizeObserver(() => this.isStuck && this.toBottom()).observe(list);
  }

  /** Items shown (not pending, not separators). */
  items() {
    return this.list.querySelectorAll(":scope > li[data-seq]");
  }

  /** Opens `roomId` with `items`, its newest stored ones, at the bottom. */
  show(roomId, items, limit) {
    this.roomId = roomId;
    this.hasOlder = items.length >= limit;
    this.hasNewer = false;
    this.isStuck = true;
    const pending = [...this.list.querySelectorAll(":scope > li.pending")];
    this.list.replaceChildren(this.build(items, null), ...pending);
    this.toBottom();
  }

  /**
   * Opens `roomId` around one item (a search hit): `items` holds stored
   * items on both sides of `seq`; the hit is scrolled into the middle of
   * the view and marked.
   */
  showAround(roomId, items, seq, { hasOlder, hasNewer }) {
    this.roomId = roomId;
    this.hasOlder = hasOlder;
    this.hasNewer = hasNewer;
    const pending = [...this.list.querySelectorAll(":scope > li.pending")];
    this.list.replaceChildren(this.build(items, null), ...(hasNewer ? [] : pending));
    const hit = this.list.querySelector(`:scope > li[data-seq="${seq}"]`);
    if (!hit) return this.toBottom();
    hit.classList.add("found");
    this.list.scrollTop = hit.offsetTop - this.list.offsetTop - (this.list.clientHeight - hit.offsetHeight) / 2;
    this.isStuck = false;
  }

  clear() {
    this.roomId = null;
    this.list.replaceChildren();
  }

  toBottom() {
    this.list.scrollTop = this.list.scrollHeight;
    this.isStuck = true;
  }

  /** Items that just arrived (a sync page, or one live entry). */
  append(items) {
    if (!items.length || this.hasNewer) return; // the store has them: scrolling down brings them
    const lastSeq = Number(this.items()[this.items().length - 1]?.dataset.seq ?? 0);
    const fresh = items.filter((i) => i.seq > lastSeq);
    if (!fresh.length) return;
    if (this.isStuck && fresh.length >= WINDOW) {
      // A whole sync page while at the bottom: only its newest items would
      // stay after trimming, so only they are built.
      const pending = [...this.list.querySelectorAll(":scope > li.pending")];
      this.list.replaceChildren(this.build(fresh.slice(-WINDOW), null), ...pending);
      this.hasOlder = true;
      this.toBottom();
      return;
    }
    const wasStuck = this.isStuck;
    this.list.insertBefore(this.build(fresh, this.lastDay()), this.list.querySelector(":scope > li.pending"));
    if (wasStuck) {
      this.trimTop();
      this.toBottom();
    }
  }

  /** Forces the view to the bottom (the user sent something). */
  follow() {
    if (this.hasNewer) return;
    this.toBottom();
  }

  lastDay() {
    const all = this.items();
    return all.length ? all[all.length - 1].dataset.day : null;
  }

  build(items, previousDay) {
    const fragment = document.createDocumentFragment();
    let day = previousDay;
    for (const item of items) {
      const itemDay = dayOf(item.ts);
      if (itemDay !== day) {
        fragment.append(separatorFor(itemDay));
        day = itemDay;
      }
      const li = this.render(item);
      li.dataset.day = itemDay;
      fragment.append(li);
    }
    return fragment;
  }

  onScroll() {
    const { scrollTop, scrollHeight, clientHeight } = this.list;
    this.isStuck = scrollHeight - scrollTop - clientHeight < STUCK_PX;
    if (this.isLoading || this.roomId === null) return;
    if (scrollTop < EDGE_PX && this.hasOlder) this.loadOlder();
    else if (scrollHeight - scrollTop - clientHeight < EDGE_PX && this.hasNewer) this.loadNewer();
  }

  async loadOlder() {
    const first = this.items()[0];
    if (!first) return;
    this.isLoading = true;
    const roomId = this.roomId;
    try {
      const items = await this.load("before", Number(first.dataset.seq), PAGE);
      if (roomId !== this.roomId) return;
      this.hasOlder = items.length >= PAGE;
      if (!items.length) return;
      const height = this.list.scrollHeight;
      const top = this.list.scrollTop;
      const fragment = this.build(items, null);
      // The separator that opened the old first day moves up with the day.
      const oldSeparator = first.previousElementSibling;
      if (oldSeparator?.classList.contains("day") && oldSeparator.dataset.day === dayOf(items.at(-1).ts)) oldSeparator.remove();
      this.list.prepend(fragment);
      this.list.scrollTop = top + (this.list.scrollHeight - height);
      this.trimBottom();
    } finally {
      this.isLoading = false;
    }
  }

  async loadNewer() {
    const all = this.items();
    const last = all[all.length - 1];
    if (!last) return;
    this.isLoading = true;
    const roomId = this.roomId;
    try {
      const items = await this.load("after", Number(last.dataset.seq), PAGE);
      if (roomId !== this.roomId) return;
      this.hasNewer = items.length >= PAGE;
      if (!items.length) return;
      this.list.insertBefore(this.build(items, this.lastDay()), this.list.querySelector(":scope > li.pending"));
      this.trimTop(true);
    } finally {
      this.isLoading = false;
    }
  }

  /** Lets go of the oldest items beyond the window (keeping the view where it is). */
  trimTop(keepView = false) {
    const all = this.items();
    if (all.length <= MAX_ITEMS) return;
    const keepFrom = all[all.length - WINDOW];
    const height = this.list.scrollHeight;
    const top = this.list.scrollTop;
    while (this.list.firstElementChild && this.list.firstElementChild !== keepFrom) this.list.firstElementChild.remove();
    if (!keepFrom.previousElementSibling?.classList.contains("day")) {
      this.list.prepend(separatorFor(keepFrom.dataset.day));
    }
    this.hasOlder = true;
    if (keepView) this.list.scrollTop = top - (height - this.list.scrollHeight);
  }

  /** Lets go of the newest items beyond the window, after loading older ones. */
  trimBottom() {
    const all = this.items();
    if (all.length <= MAX_ITEMS) return;
    const keepTo = all[WINDOW - 1];
    for (;;) {
      const next = keepTo.nextElementSibling;
      if (!next || next.classList.contains("pending")) break;
      next.remove();
    }
    this.hasNewer = true;
  }
}
