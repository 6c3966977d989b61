// Telling the user about new messages while they look elsewhere: the tab
// title carries the unread count, and a desktop notification (Notification
// API) appears for a message that arrives while the tab is hidden. The
// browser's permission is asked once, the first time the user sends
// something (a click or a key press, which browsers want for the prompt).
// Notifications name the sender and the conversation only; the message
// text is shown only if the user opts in (a notification can be read on a
// locked screen or by whoever sits next to it).

const settingsKey = (user) => `hush.notify.${user}`;

export class Notifier {
  constructor(user) {
    this.user = user;
    this.settings = { asked: false, showText: false, ...JSON.parse(localStorage.getItem(settingsKey(user)) ?? "{}") };
  }

  save() {
    localStorage.setItem(settingsKey(this.user), JSON.stringify(this.settings));
  }

  get isSupported() {
    return typeof globalThis.Notification === "function";
  }

  get showText() {
    return this.settings.showText;
  }

  set showText(value) {
    this.settings.showText = !!value;
    this.save();
  }

  /** Asks for the permission, once per user of this browser. */
  async askOnce() {
    if (!this.isSupported || this.settings.asked || Notification.permission !== "default") return;
    this.settings.asked = true;
    this.save();
    try {
      await Notification.requestPermission();
    } catch {
      // a browser that refuses to ask: nothing to do
    }
  }

  /** Shows one notification for `count` new messages of a conversation, if the tab is hidden. */
  message({ roomId, title, sender, text, count = 1 }) {
    if (!document.hidden || !this.isSupported || Notification.permission !== "granted") return;
    const body = this.settings.showText && text ? `${sender}: ${text}` : count > 1 ? `${count} new messages` : `New message from ${sender}`;
    try {
      const note = new Notification(`hush · ${title}`, { body, tag: `hush-${roomId}` });
      note.onclick = () => {
        globalThis.focus();
        note.close();
      };
    } catch {
      // some browsers only notify from a service worker: the title still counts
    }
  }
}

/** "(3) hush" when 3 messages are unread, "hush" otherwise. */
export const titleWithUnread = (unread) => (unread > 0 ? `(${unread}) hush` : "hush");
